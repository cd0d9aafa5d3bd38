import Backstage
import BackstageConsole
import BoxOffice
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Metrics
import Prometheus
import Testing

/// The service around the API: one error shape, nothing stored for a rejected request, small
/// answers, health, metrics, the live event stream and the console.
@Suite("Box-office service")
struct ServiceTests {
    /// The test process's metrics registry, bootstrapped once as `box-office serve` does.
    static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(BoxOfficeAPI.metricsFactory(registry: registry))
        return registry
    }()

    /// Runs `test` against the full service over an SQLite file: read models and receipts running,
    /// health, metrics and the console mounted.
    func withService(
        _ test: @Sendable (any TestClientProtocol, BackstageApp, PipelineService) async throws -> Void
    ) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-svc-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = try BoxOfficeDatabase.open(
            .sqlite(path: directory.appendingPathComponent("s.sqlite").path))
        try await withService(database: database, test)
        try await database.close()
    }

    /// Runs `test` against the full service over `database`.
    func withService(
        database: BoxOfficeDatabase,
        _ test: @Sendable (any TestClientProtocol, BackstageApp, PipelineService) async throws -> Void
    ) async throws {
        let app = BackstageApp(store: database.store, router: try .boxOffice())
        let readModels = try await BoxOfficeReadModels(database: database, failEvery: 0)
        var logger = Logger(label: "box-office-test")
        logger.logLevel = .warning
        let pipelines = try readModels.pipelines(app: app, logger: logger)
        let running = Task { try await pipelines.run() }
        var console = BackstageConsole(app: app, pipelines: pipelines)
        console.register(Show.self)
        let server = BoxOfficeAPI.application(
            app: app, readModels: readModels, pipelines: pipelines, metrics: Self.registry, console: console, port: 0,
            logger: logger)
        do {
            try await server.test(.router) { client in try await test(client, app, pipelines) }
        } catch {
            pipelines.stop()
            _ = try? await running.value
            throw error
        }
        pipelines.stop()
        try await running.value
    }

    /// Sends a raw body.
    func post(_ client: any TestClientProtocol, _ uri: String, raw: String) async throws -> APITests.Reply {
        let response = try await client.execute(
            uri: uri, method: .post, headers: [.contentType: "application/json"], body: ByteBuffer(string: raw))
        let json = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: any Sendable]
        return APITests.Reply(status: response.status, json: json ?? [:])
    }

    @Test func everyErrorHasOneShapeAndARejectedRequestStoresNothing() async throws {
        try await withService { client, app, _ in
            _ = try await client.send(.post, "/shows", ["id": "s1", "title": "Hamlet", "capacity": 1])
            _ = try await client.send(.post, "/shows/s1/tickets", ["ticketID": "t1"])
            let head = try await app.store.headPosition()

            let cases: [(APITests.Reply, HTTPResponse.Status, String, String?)] = [
                (
                    try await post(client, "/shows/s1/sell", raw: "{\"buyer\": "), .badRequest, "malformedJSON",
                    "the body is not valid JSON"
                ),
                (
                    try await post(client, "/shows", raw: "{\"title\": \"X\", \"capacity\": \"many\"}"), .badRequest,
                    "invalidRequest", "the field 'capacity' must be a number"
                ),
                (
                    try await post(client, "/shows", raw: "{\"capacity\": 3}"), .badRequest, "invalidRequest",
                    "the field 'title' is missing"
                ),
                (
                    try await post(client, "/shows", raw: "{\"title\": \"X\", \"capacity\": 0}"), .unprocessableContent,
                    "invalidCapacity", "a show needs at least one seat, not 0"
                ),
                (
                    try await post(client, "/shows/s1/tickets", raw: "{\"ticketID\": \"t2\"}"), .conflict,
                    "capacityReached", "the show has all its 1 tickets"
                ),
                (try await post(client, "/nowhere", raw: "{}"), .notFound, "notFound", "no route for POST /nowhere"),
                (try await client.send(.get, "/shows/none"), .notFound, "unknownShow", "show none is not scheduled"),
            ]
            for (reply, status, code, message) in cases {
                #expect(reply.status == status, "\(code)")
                #expect(Set(reply.json.keys) == ["error", "message"], "one shape: \(reply.json)")
                #expect(reply.json["error"] as? String == code)
                if let message { #expect(reply.json["message"] as? String == message) }
            }
            #expect(try await app.store.headPosition() == head, "no rejected request stored an event")
        }
    }

    /// A middleware that fails every dispatch with an error the API does not know.
    struct Broken: Backstage.Middleware {
        struct Secret: Error {}
        func beforeDispatch(_ context: inout CommandContext) async throws { throw Secret() }
    }

    @Test func anUnexpectedFailureAnswers500InTheSameShapeWithoutInternals() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try .boxOffice(), middleware: [Broken()])
        var logger = Logger(label: "box-office-test")
        logger.logLevel = .critical
        try await BoxOfficeAPI.application(app: app, port: 0, logger: logger).test(.router) { client in
            let reply = try await client.send(.post, "/shows", ["id": "x", "title": "X", "capacity": 1])
            #expect(reply.status == .internalServerError)
            #expect(Set(reply.json.keys) == ["error", "message"])
            #expect(reply.json["error"] as? String == "internalError")
            #expect((reply.json["message"] as? String)?.contains("Secret") == false)
        }
    }

    @Test func aCommandsAnswerStaysSmallAsTheShowGrows() async throws {
        try await withService { client, app, _ in
            _ = try await client.send(.post, "/shows", ["id": "big", "title": "Big", "capacity": 2_000])
            for i in 0..<2_000 { _ = try await app.dispatch(AddTicket(showID: "big", ticketID: "ticket-\(i)")) }
            let response = try await client.execute(
                uri: "/shows/big/sell", method: .post, headers: [.contentType: "application/json"],
                body: ByteBuffer(string: #"{"buyer": "ada"}"#))
            #expect(response.status == .ok)
            #expect(response.body.readableBytes < 1_000, "\(response.body.readableBytes) bytes")
            let json = try #require(
                try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
            let show = try #require(json["show"] as? [String: Any])
            #expect(show["tickets"] as? Int == 2_000)
            #expect(show["ticketsSold"] as? Int == 1)
            #expect(show["ticketsOnSale"] as? Int == 1_999)
            let summary = try await client.execute(uri: "/shows/big", method: .get)
            #expect(summary.body.readableBytes < 1_000)
        }
    }

    @Test func healthReportsTheStoreAndThePipelines() async throws {
        try await withService { client, app, pipelines in
            _ = try await app.dispatch(ScheduleShow(showID: "h", title: "H", capacity: 1))
            try await pipelines.waitUntilProcessed(timeout: .seconds(60))
            let reply = try await client.send(.get, "/health")
            #expect(reply.status == .ok)
            #expect(reply.json["status"] as? String == "ok")
            let store = try #require(reply.json["store"] as? [String: Any])
            #expect(store["reachable"] as? Bool == true)
            #expect(store["head"] as? String == "1")
            let subscriptions = try #require(reply.json["subscriptions"] as? [[String: Any]])
            #expect(subscriptions.compactMap { $0["name"] as? String } == ["receipts", "sales", "seats", "tickets"])
            #expect(subscriptions.allSatisfy { ["live", "catchingUp"].contains($0["state"] as? String) })
        }
        // A store that does not answer: unhealthy.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-down-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = try BoxOfficeDatabase.open(
            .sqlite(path: directory.appendingPathComponent("d.sqlite").path))
        try await database.close()
        let health = await HealthView.check(store: database.store, pipelines: nil)
        #expect(!health.healthy)
        #expect(health.store.reachable == false)
        #expect(health.store.error != nil)
    }

    @Test func metricsAreServedForPrometheus() async throws {
        try await withService { client, _, _ in
            _ = try await client.send(.post, "/shows", ["id": "m1", "title": "Metrics", "capacity": 1])
            let response = try await client.execute(uri: "/metrics", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
            let text = String(buffer: response.body)
            #expect(text.contains("# TYPE backstage_commands counter"))
            #expect(text.contains("backstage_commands{command=\"ScheduleShow\",category=\"show\",outcome=\"success\""))
            #expect(text.contains("# TYPE backstage_store_append_duration histogram"), "store metrics")
            #expect(text.contains("service=\"box-office\""))
            #expect(text.contains("hb_requests"), "HTTP request metrics")
        }
    }

    @Test func theLogStreamsAsServerSentEventsAndTheConsoleIsMounted() async throws {
        try await withService { client, app, _ in
            _ = try await client.send(.post, "/shows", ["id": "e1", "title": "Events & <Tags>", "capacity": 2])
            _ = try await client.send(.post, "/shows/e1/tickets", ["ticketID": "t1"])
            let response = try await client.execute(uri: "/events?after=0&limit=2", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "text/event-stream")
            let body = String(buffer: response.body)
            let data = body.split(separator: "\n").filter { $0.hasPrefix("data: ") }.map { $0.dropFirst(6) }
            #expect(data.count == 2)
            let first = try #require(try JSONSerialization.jsonObject(with: Data(data[0].utf8)) as? [String: Any])
            #expect(first["type"] as? String == "ShowScheduled")
            #expect(first["stream"] as? String == "show-e1")
            #expect((first["data"] as? [String: Any])?["title"] as? String == "Events & <Tags>")

            let console = try await client.execute(uri: "/console", method: .get)
            #expect(console.status == .ok)
            let page = String(buffer: console.body)
            #expect(page.contains("<title>Overview · Backstage</title>"))
            #expect(page.contains("tickets@v1"), "the read models' subscriptions")
            let show = try await client.execute(uri: "/console/aggregate?type=show&id=e1", method: .get)
            #expect(String(buffer: show.body).contains("Events &amp; &lt;Tags&gt;"))
            _ = app
        }
    }

    @Test(.needsPostgres) func theConsoleHealthAndEventsOnPostgres() async throws {
        try await BoxOfficePostgres.withDatabase { database in
            try await withService(database: database) { client, _, pipelines in
                _ = try await client.send(
                    .post, "/shows", ["id": "pg", "title": "On <PostgreSQL>", "capacity": 2],
                    headers: [HTTPField.Name("Consistency")!: "strong"])
                try await pipelines.waitUntilProcessed(timeout: .seconds(60))

                let overview = try await client.execute(uri: "/console", method: .get)
                #expect(overview.status == .ok)
                let page = String(buffer: overview.body)
                #expect(page.contains("tickets@v1"))
                #expect(page.contains("token"), "the lease of each subscription, from the store")
                #expect(page.contains(">show-pg</a>"), "the latest events, found by transaction id")
                let latest = String(buffer: try await client.execute(uri: "/console/log", method: .get).body)
                #expect(latest.contains("ShowScheduled"))
                let streams = String(buffer: try await client.execute(uri: "/console/streams", method: .get).body)
                #expect(streams.contains(">show-pg</a>"))
                let log = String(buffer: try await client.execute(uri: "/console/log?after=0", method: .get).body)
                #expect(log.contains("ShowScheduled") && log.contains("On &lt;PostgreSQL&gt;"))
                let subscriptions = try await client.execute(uri: "/console/subscriptions", method: .get)
                #expect(subscriptions.status == .ok)
                let state = try await client.execute(uri: "/console/aggregate?stream=show-pg", method: .get)
                #expect(String(buffer: state.body).contains("at version <b>1</b> of 1"))

                let health = try await client.send(.get, "/health")
                #expect(health.status == .ok)
                let events = try await client.execute(uri: "/events?after=0&limit=1", method: .get)
                let ids = String(buffer: events.body).split(separator: "\n").filter { $0.hasPrefix("id: ") }
                #expect(ids.count == 1)
                #expect(ids.first?.contains(":") == true, "a PostgreSQL log position: transaction:position")
            }
        }
    }
}
