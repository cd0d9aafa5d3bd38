import Backstage
import BackstageTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

@testable import BackstagePostgres

// The box office's show events as they are today; Tests/Fixtures/evolution-v1.postgres.sql holds
// older shapes: "SeatSold" v1 (the old name of "TicketSold"), "TicketSold" v1 {show, seat} and
// v2 {showID, ticketID, price}; the current "TicketSold" is v3 (adds currency).

/// Sales per show, from typed envelopes.
struct PGSalesReadModel: TypedPostgresReadModel {
    let name = "pg-sales"
    let tables = ["pg_sales"]
    let logger = Logger(label: "pg-sales")

    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        _ = try await connection.query(
            """
            CREATE TABLE \(unescaped: try tables.table("pg_sales")) (
                show text PRIMARY KEY, sold bigint NOT NULL, revenue bigint NOT NULL
            )
            """, logger: logger)
    }

    func apply(_ envelope: Envelope<FixShowEvent>, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        guard case .ticketSold(let sold) = envelope.event else { return }
        _ = try await connection.query(
            """
            INSERT INTO \(unescaped: try tables.table("pg_sales")) AS s (show, sold, revenue)
            VALUES (\(sold.showID), 1, \(sold.price))
            ON CONFLICT (show) DO UPDATE SET sold = s.sold + 1, revenue = s.revenue + excluded.revenue
            """, logger: logger)
    }
}

extension PostgresTests {
    @Suite("PostgreSQL fixture: events stored in older shapes")
    struct FixtureEvolution {
        @Test("a SQL dump of old shapes, loaded into a version-2 schema and migrated, reads as the current shapes")
        func readsOldDump() async throws {
            try await withFreshStore(configure: { $0.migrate = false }) { store in
                // The dump is of a store before migration 3 (bytea event data): load it into such a
                // schema, then migrate it like an upgraded application would.
                try await loadEvolutionFixture(into: store)
                #expect(try await store.migrate().first == 3)

                var router = Router()
                try router.route(FixSellTicket.self, id: \.showID) { _, c in
                    [
                        .ticketSold(
                            FixTicketSold(showID: c.showID, ticketID: c.ticketID, price: c.price, currency: "USD"))
                    ]
                }
                let app = BackstageApp(store: store, router: router)
                try await app.dispatch(FixSellTicket(showID: "s1", ticketID: "A4", price: 50))
                let show = try await app.load(FixShow.self, id: "s1").state
                #expect(show.title == "Hamlet")
                #expect(show.tickets == ["A1", "A2", "A3", "A4"])
                #expect(show.revenue == 90)

                let model = PGSalesReadModel()
                #expect(model.filter == EventFilter(types: ["ShowScheduled", "SeatSold", "TicketSold"]))
                let projection = try PostgresProjection(model, store: store)
                let service = try PipelineService(app: app, projections: [projection])
                let running = Task { try await service.run() }
                try await service.waitUntilProcessed()
                service.stop()
                try await running.value
                let rows = try await store.client.query(
                    "SELECT sold, revenue FROM \(unescaped: store.schema.rawValue).pg_sales WHERE show = 's1'")
                var found: [[Int64]] = []
                for try await (sold, revenue) in rows.decode((Int64, Int64).self) { found.append([sold, revenue]) }
                #expect(found == [[4, 90]])
                #expect(try await service.parkedEvents().isEmpty)
            }
        }
    }
}

/// Builds the schema of `store` up to migration 2 and loads Tests/Fixtures/evolution-v1.postgres.sql.
func loadEvolutionFixture(into store: PostgresEventStore) async throws {
    let dump = try String(
        contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/evolution-v1.postgres.sql"), encoding: .utf8)
    _ = try await store.client.withConnection { conn in
        try await PostgresMigrations.migrate(
            store.schema, on: conn, logger: Logger(label: "fixture"), through: 2)
    }
    let statements =
        dump.split(separator: "\n").filter { !$0.hasPrefix("--") }.joined(separator: "\n")
        .replacingOccurrences(of: "__SCHEMA__", with: store.schema.rawValue)
        .components(separatedBy: ";\n").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        .filter { !$0.isEmpty }
    #expect(statements.count == 2)
    for statement in statements {
        let sql = statement.hasSuffix(";") ? String(statement.dropLast()) : statement
        _ = try await store.client.query(PostgresQuery(unsafeSQL: sql))
    }
}
