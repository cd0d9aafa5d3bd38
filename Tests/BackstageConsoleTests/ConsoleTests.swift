import Backstage
import BackstageConsole
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Synchronization
import Testing

// A counter domain for the console's pages.

struct Incremented: Event, Equatable {
    static let typeName = "Incremented"
    var by: Int
    var note: String
}

enum CounterEvent: EventFamily, Equatable {
    case incremented(Incremented)
    static let members: [EventMember<CounterEvent>] = [.init(Incremented.self, CounterEvent.incremented)]
}

struct Counter: Aggregate, Codable, Equatable {
    typealias Event = CounterEvent
    static let category = "counter"
    var count = 0
    var notes: [String] = []
    init() {}
    mutating func apply(_ event: CounterEvent) {
        if case .incremented(let e) = event {
            count += e.by
            notes.append(e.note)
        }
    }
}

struct Increment: Command {
    typealias Target = Counter
    var id: String
    var by: Int
    var note: String
}

/// A handler that fails while `failing` is set: its events get parked.
final class FlakyHandler: EventHandler {
    let name = "flaky"
    let failing = Mutex(true)
    let handled = Mutex(0)
    var options: HandlerOptions {
        var options = HandlerOptions()
        options.failurePolicy = FailurePolicy(maxRetries: 0, initialBackoff: .milliseconds(1), finalAction: .park)
        options.checkpointInterval = .milliseconds(10)
        options.pollInterval = .milliseconds(20)
        return options
    }
    struct Failure: Error, CustomStringConvertible {
        var description: String { "the <mail> server said no & hung up" }
    }
    func handle(_ event: RecordedEvent) async throws {
        if failing.withLock({ $0 }) { throw Failure() }
        handled.withLock { $0 += 1 }
    }
}

@Suite("Web console")
struct ConsoleTests {
    static let nasty = "<script>alert('x')</script>"

    func makeApp() throws -> BackstageApp {
        var router = Backstage.Router()
        try router.route(Increment.self, id: \.id) { _, c in
            [.incremented(Incremented(by: c.by, note: c.note))]
        }
        return BackstageApp(store: InMemoryEventStore(), router: router)
    }

    func application(_ console: BackstageConsole) -> some ApplicationProtocol {
        let router = Hummingbird.Router()
        console.addRoutes(to: router, at: "/console")
        return Application(router: router)
    }

    func text(_ response: TestResponse) -> String { String(buffer: response.body) }

    @Test func pagesRenderTheStoreAndEscapeUserData() async throws {
        let app = try makeApp()
        for i in 1...3 {
            _ = try await app.dispatch(Increment(id: "c1", by: i, note: "note \(i) \(Self.nasty)"))
        }
        // A stream whose name and data are markup.
        let data = try JSONSerialization.data(withJSONObject: ["html": "<img src=x onerror=alert(1)>"])
        _ = try await app.store.append(
            [EventData(type: "Odd<Type>", data: data, metadata: EventMetadata(fields: ["user": Self.nasty]))],
            to: "weird-\(Self.nasty)", expected: .any, commandID: nil)
        var console = BackstageConsole(app: app)
        console.register(Counter.self)

        try await application(console).test(.router) { client in
            for path in [
                "/console", "/console/log", "/console/log?after=0", "/console/streams",
                "/console/stream?id=\(queryEncoded("weird-\(Self.nasty)"))", "/console/subscriptions",
                "/console/parked", "/console/aggregates",
            ] {
                let response = try await client.execute(uri: path, method: .get)
                #expect(response.status == .ok, "\(path)")
                #expect(response.headers[.contentType] == "text/html; charset=utf-8")
                let page = text(response)
                #expect(page.hasPrefix("<!doctype html>"), "\(path)")
                #expect(!page.contains("<script>alert"), "\(path) must escape user data")
                #expect(!page.contains("<img src=x"), "\(path) must escape event data")
            }
            let log = text(try await client.execute(uri: "/console/log?after=0", method: .get))
            #expect(log.contains("weird-&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"))
            #expect(log.contains("Odd&lt;Type&gt;"))
            #expect(log.contains("&lt;img src=x onerror=alert(1)&gt;"))
            #expect(log.contains("Incremented"))

            let streams = text(try await client.execute(uri: "/console/streams", method: .get))
            #expect(streams.contains(">counter-c1</a>"))
            #expect(streams.contains("href=\"/console/stream?id=counter-c1\""))

            let stream = text(try await client.execute(uri: "/console/stream?id=counter-c1", method: .get))
            #expect(stream.contains("id=\"v3\""), "rows are anchored by version")
            #expect(stream.contains("/console/message?id="), "the command of each event is a link")

            let missing = try await client.execute(uri: "/console/stream?id=nope", method: .get)
            #expect(missing.status == .notFound)
        }
    }

    @Test func theLogAndTheStreamsArePagedAndFiltered() async throws {
        let app = try makeApp()
        for i in 1...5 { _ = try await app.dispatch(Increment(id: "c\(i)", by: i, note: "n")) }
        _ = try await app.store.append(
            [EventData(type: "Other", data: Data("{}".utf8), metadata: EventMetadata())], to: "misc-1", expected: .any,
            commandID: nil)
        var configuration = BackstageConsole.Configuration()
        configuration.pageSize = 2
        let console = BackstageConsole(app: app, configuration: configuration)
        try await application(console).test(.router) { client in
            let first = text(try await client.execute(uri: "/console/log?after=0", method: .get))
            #expect(first.contains(">counter-c1</a>") && first.contains(">counter-c2</a>"))
            #expect(!first.contains(">counter-c3</a>"))
            #expect(first.contains("href=\"/console/log?after=2\">next page</a>"))
            let filtered = text(try await client.execute(uri: "/console/log?after=0&type=Other", method: .get))
            #expect(filtered.contains(">misc-1</a>") && !filtered.contains(">counter-c1</a>"))
            let latest = text(try await client.execute(uri: "/console/log", method: .get))
            #expect(latest.contains(">misc-1</a>") && latest.contains(">counter-c5</a>"), "the latest two events")
            #expect(!latest.contains(">counter-c4</a>"))
            let latestCounters = text(try await client.execute(uri: "/console/log?category=counter", method: .get))
            #expect(latestCounters.contains(">counter-c5</a>") && latestCounters.contains(">counter-c4</a>"))
            #expect(!latestCounters.contains(">misc-1</a>") && !latestCounters.contains(">counter-c3</a>"))

            let streams = text(try await client.execute(uri: "/console/streams?category=counter", method: .get))
            #expect(streams.contains(">counter-c1</a>") && !streams.contains(">misc-1</a>"))
            #expect(streams.contains("href=\"/console/streams?category=counter&amp;after=counter-c2\">next page</a>"))
            let bad = try await client.execute(uri: "/console/log?after=x", method: .get)
            #expect(bad.status == .badRequest)
        }
    }

    @Test func causationLinksLeadToTheCommandsEvents() async throws {
        let app = try makeApp()
        let commandID = UUID()
        _ = try await app.dispatch(
            Increment(id: "c1", by: 5, note: "five"), options: DispatchOptions(commandID: commandID))
        let console = BackstageConsole(app: app)
        try await application(console).test(.router) { client in
            let response = try await client.execute(uri: "/console/message?id=\(commandID.uuidString)", method: .get)
            #expect(response.status == .ok)
            let page = text(response)
            #expect(page.contains("stored versions 1–1"))
            #expect(page.contains(">counter-c1</a>"))
            let unknown = try await client.execute(uri: "/console/message?id=\(UUID().uuidString)", method: .get)
            #expect(unknown.status == .notFound)
        }
    }

    @Test func anAggregatesStateAtAnyVersion() async throws {
        let app = try makeApp()
        for i in 1...4 { _ = try await app.dispatch(Increment(id: "c1", by: i, note: "n\(i)")) }
        var console = BackstageConsole(app: app)
        console.register(Counter.self)
        try await application(console).test(.router) { client in
            let v2 = text(
                try await client.execute(uri: "/console/aggregate?type=counter&id=c1&version=2", method: .get))
            #expect(v2.contains("at version <b>2</b> of 4"))
            #expect(v2.contains("&quot;count&quot; : 3"), "1 + 2 after version 2")
            #expect(!v2.contains("n3"))
            let latest = text(try await client.execute(uri: "/console/aggregate?stream=counter-c1", method: .get))
            #expect(latest.contains("&quot;count&quot; : 10"))
            let unknown = try await client.execute(uri: "/console/aggregate?type=nope&id=c1", method: .get)
            #expect(unknown.status == .notFound)
            let bad = try await client.execute(uri: "/console/aggregate?type=counter&id=c1&version=x", method: .get)
            #expect(bad.status == .badRequest)
        }
    }

    /// Runs `body` with a console over pipelines whose flaky handler has parked the app's three events.
    func withParkedEvents(
        guard actions: ConsoleGuard,
        _ body: @Sendable (any TestClientProtocol, PipelineService, FlakyHandler, [RecordedEvent]) async throws -> Void
    ) async throws {
        let app = try makeApp()
        for i in 1...3 { _ = try await app.dispatch(Increment(id: "c\(i)", by: i, note: "n")) }
        let handler = FlakyHandler()
        let pipelines = try PipelineService(
            app: app, handlers: [handler], checkpoints: InMemoryCheckpointStore(),
            parkedEvents: InMemoryParkedEventStore(), leadership: SingleProcessLeadership())
        var configuration = BackstageConsole.Configuration()
        configuration.actions = actions
        let console = BackstageConsole(app: app, pipelines: pipelines, configuration: configuration)
        let running = Task { try await pipelines.run() }
        defer { pipelines.stop() }
        try await pipelines.waitUntilProcessed(subscriptions: ["flaky"], timeout: .seconds(60))
        let parked = try await pipelines.parkedEvents()
        #expect(parked.count == 3)
        try await application(console).test(.router) { client in
            try await body(client, pipelines, handler, parked.map(\.event))
        }
        pipelines.stop()
        try await running.value
    }

    func form(_ fields: [String: String]) -> ByteBuffer {
        ByteBuffer(string: fields.map { "\($0.key)=\(queryEncoded($0.value))" }.joined(separator: "&"))
    }

    let formHeaders: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]

    @Test func parkedEventsCannotBeReplayedWhenTheGuardDenies() async throws {
        try await withParkedEvents(guard: .readOnly) { client, pipelines, handler, events in
            let page = text(try await client.execute(uri: "/console/parked", method: .get))
            #expect(page.contains("the &lt;mail&gt; server said no &amp; hung up"), "the error, escaped")
            #expect(page.contains("Read-only"))
            #expect(!page.contains("action=\"/console/parked/replay\""), "no replay form")
            handler.failing.withLock { $0 = false }
            for action in ["replay", "discard"] {
                let response = try await client.execute(
                    uri: "/console/parked/\(action)", method: .post, headers: formHeaders,
                    body: form(["subscription": "flaky", "position": events[0].logPosition.description]))
                #expect(response.status == .forbidden)
            }
            #expect(try await pipelines.parkedEvents().count == 3, "nothing changed")
            #expect(handler.handled.withLock { $0 } == 0)
        }
    }

    @Test func parkedEventsAreReplayedAndDiscardedWhenTheGuardAllows() async throws {
        let token = HTTPField.Name("X-Operator")!
        let guardian = ConsoleGuard { request in request.headers[token] == "yes" }
        try await withParkedEvents(guard: guardian) { client, pipelines, handler, events in
            var headers = formHeaders
            headers[token] = "yes"
            let subscriptions = text(try await client.execute(uri: "/console/subscriptions", method: .get))
            #expect(subscriptions.contains("<b>flaky</b>"))
            #expect(subscriptions.contains("live here"))
            #expect(
                subscriptions.contains("href=\"/console/parked?subscription=flaky\">3</a>"), "the parked count links")

            let page = text(try await client.execute(uri: "/console/parked", method: .get, headers: headers))
            #expect(page.contains("action=\"/console/parked/replay\""))
            #expect(page.contains("action=\"/console/parked/discard\""))

            // Still failing: the replay answers 422 and the event stays parked.
            let failed = try await client.execute(
                uri: "/console/parked/replay", method: .post, headers: headers,
                body: form(["subscription": "flaky", "position": events[0].logPosition.description]))
            #expect(failed.status == .unprocessableContent)
            #expect(try await pipelines.parkedEvents().count == 3)

            handler.failing.withLock { $0 = false }
            let replayed = try await client.execute(
                uri: "/console/parked/replay", method: .post, headers: headers,
                body: form(["subscription": "flaky", "position": events[0].logPosition.description]))
            #expect(replayed.status == .seeOther)
            #expect(replayed.headers[.location]?.hasPrefix("/console/parked?done=replayed") == true)
            #expect(handler.handled.withLock { $0 } == 1)

            let discarded = try await client.execute(
                uri: "/console/parked/discard", method: .post, headers: headers,
                body: form(["subscription": "flaky", "position": events[1].logPosition.description]))
            #expect(discarded.status == .seeOther)
            #expect(handler.handled.withLock { $0 } == 1, "a discard does not handle the event")
            #expect(try await pipelines.parkedEvents().map(\.event.position) == [events[2].position])

            // The same event again: it is not parked any more.
            let again = try await client.execute(
                uri: "/console/parked/discard", method: .post, headers: headers,
                body: form(["subscription": "flaky", "position": events[1].logPosition.description]))
            #expect(again.status == .conflict)

            // Another site's form is refused even for an operator.
            var crossSite = headers
            crossSite[HTTPField.Name("Sec-Fetch-Site")!] = "cross-site"
            let forged = try await client.execute(
                uri: "/console/parked/discard", method: .post, headers: crossSite,
                body: form(["subscription": "flaky", "position": events[2].logPosition.description]))
            #expect(forged.status == .forbidden)
            #expect(try await pipelines.parkedEvents().count == 1)

            // Without the header the guard denies.
            let denied = try await client.execute(
                uri: "/console/parked/discard", method: .post, headers: formHeaders,
                body: form(["subscription": "flaky", "position": events[2].logPosition.description]))
            #expect(denied.status == .forbidden)
        }
    }

    @Test func theLiveTailSendsTheLogAsServerSentEvents() async throws {
        let app = try makeApp()
        for i in 1...3 { _ = try await app.dispatch(Increment(id: "c1", by: i, note: "n\(i) \(Self.nasty)")) }
        let console = BackstageConsole(app: app)
        try await application(console).test(.router) { client in
            let response = try await client.execute(uri: "/console/tail?after=0&limit=2", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "text/event-stream")
            let messages = sseMessages(text(response))
            #expect(messages.map(\.id) == ["1", "2"])
            let first = try #require(messages.first?.json)
            #expect(first["stream"] as? String == "counter-c1")
            #expect(first["type"] as? String == "Incremented")
            #expect((first["data"] as? [String: Any])?["note"] as? String == "n1 \(Self.nasty)")

            // A reconnecting EventSource resumes after the last id it got.
            let resumed = try await client.execute(
                uri: "/console/tail?limit=1", method: .get, headers: [HTTPField.Name("Last-Event-ID")!: "2"])
            #expect(sseMessages(text(resumed)).map(\.id) == ["3"])

            // Following the head: events stored after the stream opened arrive.
            let head = try await app.store.headPosition()
            async let tail = client.execute(uri: "/console/tail?after=\(head)&limit=2&category=counter", method: .get)
            _ = try await app.dispatch(Increment(id: "c2", by: 1, note: "later"))
            _ = try await app.dispatch(Increment(id: "c3", by: 1, note: "later"))
            let followed = sseMessages(text(try await tail))
            #expect(followed.map { $0.json?["stream"] as? String } == ["counter-c2", "counter-c3"])
        }
    }
}

struct SSEMessage {
    var id: String?
    var data: String
    var json: [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any]
    }
}

/// The messages of a `text/event-stream` body (comments skipped).
func sseMessages(_ body: String) -> [SSEMessage] {
    body.components(separatedBy: "\n\n").compactMap { block in
        var id: String?
        var data: [String] = []
        for line in block.split(separator: "\n") {
            if line.hasPrefix("id: ") { id = String(line.dropFirst(4)) }
            if line.hasPrefix("data: ") { data.append(String(line.dropFirst(6))) }
        }
        return data.isEmpty ? nil : SSEMessage(id: id, data: data.joined(separator: "\n"))
    }
}

func queryEncoded(_ value: String) -> String {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~")
    return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
}
