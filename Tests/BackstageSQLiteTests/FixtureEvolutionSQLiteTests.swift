import Backstage
import BackstageSQLite
import BackstageTestSupport
import Foundation
import GRDB
import Testing

// Tests/Fixtures/evolution-v1.sqlite.sql (the text dump of the file `writeFixture` below writes)
// holds older shapes of the show events of BackstageTestSupport's EvolutionFixtureDomain.swift.

/// Sales per show, from typed envelopes.
struct FixSalesReadModel: TypedSQLiteReadModel {
    let name = "fix-sales"
    let tables = ["fix_sales"]

    func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql:
                "CREATE TABLE \(try tables.table("fix_sales")) (show TEXT PRIMARY KEY, sold INTEGER NOT NULL, revenue INTEGER NOT NULL, currency TEXT NOT NULL)"
        )
    }

    func apply(_ envelope: Envelope<FixShowEvent>, in db: Database, tables: ProjectionTables) throws {
        guard case .ticketSold(let sold) = envelope.event else { return }
        try db.execute(
            sql: """
                INSERT INTO \(try tables.table("fix_sales")) (show, sold, revenue, currency) VALUES (?, 1, ?, ?)
                ON CONFLICT (show) DO UPDATE SET sold = sold + 1, revenue = revenue + excluded.revenue
                """, arguments: [sold.showID, sold.price, sold.currency])
    }
}

/// The committed fixture, next to the test sources: an SQL text dump of an older store's file
/// (database files are not committed).
let sqliteFixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/evolution-v1.sqlite.sql")

@Suite("SQLite fixture: events stored in older shapes", .serialized)
struct FixtureEvolutionSQLiteTests {
    /// Writes the store file behind Tests/Fixtures/evolution-v1.sqlite.sql to the path in
    /// `BACKSTAGE_WRITE_FIXTURES`; then `sqlite3 PATH .dump` gives the committed dump (keep its header).
    /// The events are appended raw, with the type names, versions and JSON of the old code.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["BACKSTAGE_WRITE_FIXTURES"] != nil))
    func writeFixture() async throws {
        let path = try #require(ProcessInfo.processInfo.environment["BACKSTAGE_WRITE_FIXTURES"])
        try? FileManager.default.removeItem(atPath: path)
        let store = try SQLiteEventStore(path: path)
        func raw(_ type: String, _ version: Int, _ json: String) -> EventData {
            EventData(type: type, schemaVersion: version, data: Data(json.utf8))
        }
        _ = try await store.append(
            [
                raw("ShowScheduled", 1, #"{"showID":"s1","title":"Hamlet"}"#),
                raw("SeatSold", 1, #"{"show":"s1","seat":"A1"}"#),
                raw("TicketSold", 1, #"{"show":"s1","seat":"A2"}"#),
                raw("TicketSold", 2, #"{"showID":"s1","ticketID":"A3","price":40}"#),
            ], to: "show-s1", expected: .noStream, commandID: nil)
        try await store.database.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
        }
        try await store.close()
    }

    @Test(
        "a committed SQLite file with old shapes reads as the current ones: aggregate, history and a typed read model")
    func readsOldFixture() async throws {
        let file = try TemporaryDatabase()
        let dump = try String(contentsOf: sqliteFixture, encoding: .utf8)
        try await DatabaseQueue(path: file.path).writeWithoutTransaction { db in try db.execute(sql: dump) }
        let store = try SQLiteEventStore(path: file.path)
        var router = Router()
        try router.route(FixSellTicket.self, id: \.showID) { _, c in
            [.ticketSold(FixTicketSold(showID: c.showID, ticketID: c.ticketID, price: c.price, currency: "USD"))]
        }
        let app = BackstageApp(store: store, router: router)
        try await app.dispatch(FixSellTicket(showID: "s1", ticketID: "A4", price: 50))

        let show = try await app.load(FixShow.self, id: "s1").state
        #expect(show.title == "Hamlet")
        #expect(show.tickets == ["A1", "A2", "A3", "A4"])
        #expect(show.revenue == 90)
        let history = try await app.history(FixShow.self, id: "s1").map(\.event)
        #expect(history.last == .ticketSold(FixTicketSold(showID: "s1", ticketID: "A4", price: 50, currency: "USD")))

        let model = FixSalesReadModel()
        #expect(model.filter == EventFilter(types: ["ShowScheduled", "SeatSold", "TicketSold"]))
        let projection = try SQLiteProjection(model, database: store.database)
        let service = try PipelineService(app: app, projections: [projection])
        let running = Task { try await service.run() }
        try await service.waitUntilProcessed()
        service.stop()
        try await running.value
        let row = try await store.database.read { db -> [Int] in
            guard let row = try Row.fetchOne(db, sql: "SELECT sold, revenue FROM fix_sales WHERE show = 's1'") else {
                return []
            }
            return [row["sold"], row["revenue"]]
        }
        #expect(row == [4, 90])
        #expect(try await service.parkedEvents().isEmpty)
        try await store.close()
    }
}
