import Backstage
import BackstagePostgres
import BoxOffice
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

/// Where the PostgreSQL tests find their server: `BACKSTAGE_POSTGRES_URL` (scripts/postgres
/// prints it). Without it they are skipped locally; with `CI=true` they run and fail, as the root
/// package's PostgreSQL tests do.
enum BoxOfficePostgres {
    static let url: String? = ProcessInfo.processInfo.environment["BACKSTAGE_POSTGRES_URL"].flatMap {
        $0.isEmpty ? nil : $0
    }
    static let shouldRun = url != nil || ProcessInfo.processInfo.environment["CI"] == "true"

    struct Missing: Error, CustomStringConvertible {
        var description: String { "BACKSTAGE_POSTGRES_URL is not set and CI=true: the PostgreSQL tests must run in CI" }
    }

    /// Runs the box office's store on a fresh schema around `body`, then drops the schema.
    static func withDatabase<T: Sendable>(_ body: (BoxOfficeDatabase) async throws -> T) async throws -> T {
        guard let url else { throw Missing() }
        let schema = "bo_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(12)
        return try await BoxOfficeDatabase.with(.postgres(url: url), fresh: true, schema: schema) { database in
            let store = try #require(database.store as? PostgresEventStore)
            do {
                let result = try await body(database)
                try await store.dropSchema()
                return result
            } catch {
                try? await store.dropSchema()
                throw error
            }
        }
    }
}

extension Trait where Self == ConditionTrait {
    /// Skips the test locally when no PostgreSQL server is configured.
    static var needsPostgres: Self {
        .enabled(if: BoxOfficePostgres.shouldRun, "BACKSTAGE_POSTGRES_URL is not set: start one with scripts/postgres")
    }
}

/// The read models on PostgreSQL: typed PostgresProjections in the store's schema.
@Suite("Box office on PostgreSQL", .needsPostgres)
struct PostgresBoxOfficeTests {
    @Test func theDemoFillsThePostgresReadModelsInTheStoresSchema() async throws {
        try await BoxOfficePostgres.withDatabase { database in
            let app = BackstageApp(store: database.store, router: try .boxOffice())
            let readModels = try await BoxOfficeReadModels(database: database, failEvery: 7)
            #expect(readModels.database == nil, "no in-memory SQLite database on PostgreSQL")
            #expect(
                readModels.projections.map { "\(type(of: $0))".hasPrefix("PostgresProjection<") } == [true, true, true])
            var demo = Demo()
            demo.commands = 600
            demo.tasks = 8
            let (_, report) = try await ReadModelReport.measure(readModels: readModels, app: app, sampleShow: "show-1")
            {
                try await demo.run(on: app)
            }
            for number in 1...15 {
                let show = try await app.load(Show.self, id: "show-\(number)").state
                guard show.capacity > 0 else { continue }
                let row = try #require(try await readModels.show("show-\(number)"))
                #expect(row.available == show.capacity - show.ticketsSold, "show-\(number)")
                #expect(row.net == show.ticketsSold)
                #expect(row.tickets.values.reduce(0, +) == show.tickets.count)
            }
            #expect(report.shows > 0 && report.parked == 0)

            // Another process's view: fresh read models over the same schema see the same rows.
            let other = try BoxOfficeReadModels(store: database.store)
            #expect(try await other.totals() == (try await readModels.totals()))
        }
    }

    @Test func serveAnswersQueriesFromThePostgresReadModelsAfterAStrongSale() async throws {
        try await BoxOfficePostgres.withDatabase { database in
            let app = BackstageApp(store: database.store, router: try .boxOffice())
            let readModels = try await BoxOfficeReadModels(
                database: database, options: ProjectionOptions(batchTimeout: .milliseconds(300)), failEvery: 0)
            var logger = Logger(label: "box-office-test")
            logger.logLevel = .warning
            let pipelines = try readModels.pipelines(app: app, logger: logger)
            let running = Task { try await pipelines.run() }
            let server = BoxOfficeAPI.application(app: app, readModels: readModels, port: 0, logger: logger)
            let strong: HTTPFields = [HTTPField.Name("X-Read-Your-Writes")!: "true"]
            do {
                try await server.test(.live) { client in
                    _ = try await client.send(.post, "/shows", ["id": "gala", "title": "Gala", "capacity": 2])
                    _ = try await client.send(.post, "/shows/gala/tickets", ["ticketID": "g1"])
                    let sale = try await client.send(.post, "/shows/gala/sell", ["buyer": "ada"], headers: strong)
                    #expect(sale.status == .ok)
                    let seats = try await client.send(.get, "/shows/gala/seats")
                    #expect(seats.status == .ok)
                    #expect(seats.json["available"] as? Int == 1 && seats.json["taken"] as? Int == 1)
                    let sales = try await client.send(.get, "/shows/gala/sales")
                    #expect(sales.json["sold"] as? Int == 1 && sales.json["net"] as? Int == 1)
                }
            } catch {
                pipelines.stop()
                _ = try? await running.value
                throw error
            }
            pipelines.stop()
            try await running.value
        }
    }
}
