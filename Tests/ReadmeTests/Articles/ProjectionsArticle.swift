// The code of the "Projections and handlers" article (Backstage.docc/ProjectionsAndHandlers.md),
// compiled and run on a real SQLite file.
import Backstage
import BackstageSQLite
import Foundation
import GRDB
import Synchronization
import Testing

struct TicketsPerShow: TypedSQLiteReadModel {
    let name = "tickets_per_show"
    let tables = ["tickets_per_show"]

    func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql:
                "CREATE TABLE \(try tables.table("tickets_per_show")) (show TEXT PRIMARY KEY, tickets INTEGER NOT NULL)"
        )
    }

    func apply(_ envelope: Envelope<ShowEvent>, in db: Database, tables: ProjectionTables) throws {
        guard case .ticketAdded(let added) = envelope.event else { return }
        try db.execute(
            sql: """
                INSERT INTO \(try tables.table("tickets_per_show")) (show, tickets) VALUES (?, 1)
                ON CONFLICT (show) DO UPDATE SET tickets = tickets + 1
                """,
            arguments: [added.showID])
    }
}

struct ReceiptPrinter: TypedEventHandler {
    let name = "receipts"
    let printed: @Sendable (String) -> Void

    func handle(_ envelope: Envelope<ShowEvent>) async throws {
        guard case .ticketAdded(let added) = envelope.event else { return }
        printed("ticket \(added.ticketID) for \(added.showID), event \(envelope.id)")
    }
}

func runReadSide(_ app: BackstageApp, database: any DatabaseWriter) async throws -> [String: Int] {
    let tickets = try SQLiteProjection(TicketsPerShow(), database: database)
    let pipelines = try PipelineService(
        app: app, handlers: [ReceiptPrinter(printed: { print($0) })], projections: [tickets])
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await pipelines.run() }
        try await pipelines.waitUntilProcessed()
        pipelines.stop()
        try await group.waitForAll()
        return try await database.read { db in
            try [String: Int](
                uniqueKeysWithValues: Row.fetchAll(db, sql: "SELECT show, tickets FROM tickets_per_show").map {
                    ($0["show"], $0["tickets"])
                })
        }
    }
}

@Suite("Article: projections and handlers")
struct ProjectionsArticle {
    @Test("the article's read model and handler run on a SQLite file")
    func article() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("article-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try SQLiteEventStore(path: directory.appendingPathComponent("store.sqlite").path)
        let app = BackstageApp(store: store, router: try showRouter())
        try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 5))
        try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A1"))
        try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A2"))
        #expect(try await runReadSide(app, database: store.database) == ["hamlet": 2])
    }
}
