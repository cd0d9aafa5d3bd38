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

/// Writes the committed fixture (an older store's file; `edit` applied to its dump first) to
/// `path` and returns the connection that wrote it, still open for the test's own statements.
func olderFile(at path: String, editing edit: (String) -> String = { $0 }) async throws -> DatabaseQueue {
    let dump = edit(try String(contentsOf: sqliteFixture, encoding: .utf8))
    let queue = try DatabaseQueue(path: path)
    try await queue.writeWithoutTransaction { db in try db.execute(sql: dump) }
    return queue
}

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
        let old = try await olderFile(at: file.path)
        try old.close()
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

    @Test("an older file's event data migrates to JSON text: the same bytes read back, SQLite's JSON functions read it")
    func migratesDataToJSONText() async throws {
        let file = try TemporaryDatabase()
        let old = try await olderFile(at: file.path)
        let before = try await old.read { db -> [Data] in
            #expect(try String.fetchAll(db, sql: "SELECT DISTINCT typeof(data) FROM backstage_events") == ["blob"])
            return try Data.fetchAll(db, sql: "SELECT data FROM backstage_events ORDER BY position")
        }
        #expect(before.count == 4)
        try old.close()

        let store = try SQLiteEventStore(path: file.path)
        let after = try await store.readAll(after: .start, limit: 100, filter: .all)
        #expect(after.map(\.data) == before)
        let migrated = try await store.database.read { db -> [[String?]] in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT typeof(data) AS kind, json_extract(data, '$.showID') AS show, json_extract(data, '$.seat') AS seat
                    FROM backstage_events ORDER BY position
                    """
            ).map { [$0["kind"], $0["show"], $0["seat"]] }
        }
        #expect(migrated.map { $0[0] } == ["text", "text", "text", "text"])
        #expect(migrated.map { $0[1] } == ["s1", nil, nil, "s1"])
        #expect(migrated.map { $0[2] } == [nil, "A1", "A2", nil])

        // New events are stored as text too; bytes that are not UTF-8 text stay a blob, unchanged.
        let json = Data(#"{"price":50,"showID":"s2","ticketID":"B1"}"#.utf8)
        let binary = Data([0x7b, 0xff, 0x00, 0x7d])
        _ = try await store.append(
            [EventData(type: "TicketSold", schemaVersion: 2, data: json), EventData(type: "Blob", data: binary)],
            to: "show-s2", expected: .noStream, commandID: UUIDv7.next())
        let appended = try await store.readStream("show-s2", from: 1, direction: .forward, limit: 10)
        #expect(appended.map(\.data) == [json, binary])
        let kinds = try await store.database.read { db -> [[String?]] in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT typeof(data) AS kind,
                        CAST(json_extract(CASE typeof(data) WHEN 'text' THEN data END, '$.price') AS TEXT) AS price
                    FROM backstage_events WHERE stream = 'show-s2' ORDER BY version
                    """
            ).map { [$0["kind"], $0["price"]] }
        }
        #expect(kinds.map { $0[0] } == ["text", "blob"])
        #expect(kinds.map { $0[1] } == ["50", nil])
        // Events stay immutable after the migration.
        await #expect(throws: (any Error).self) {
            try await store.database.write { db in try db.execute(sql: "UPDATE backstage_events SET type = 'X'") }
        }
        try await store.close()

        // Opening it again migrates nothing more and reads the same.
        let reopened = try SQLiteEventStore(path: file.path)
        #expect(try await reopened.readAll(after: .start, limit: 100, filter: .all).prefix(4).map(\.data) == before)
        try await reopened.close()
    }

    @Test(
        "an older file's events table is built again without AUTOINCREMENT: rows, positions, indexes, triggers and the application's own index and view kept"
    )
    func migratesPositionsWithoutAutoincrement() async throws {
        let file = try TemporaryDatabase()
        let old = try await olderFile(at: file.path)
        let rowsSQL = "SELECT position, stream, category, version, id, type, schema_version FROM backstage_events"
        let before = try await old.writeWithoutTransaction { db -> [String] in
            #expect(
                try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE name = 'backstage_events'")?
                    .contains("AUTOINCREMENT") == true)
            // The application's own index and view on the events table.
            try db.execute(
                sql: """
                    CREATE INDEX app_events_recorded ON backstage_events (recorded_at);
                    CREATE VIEW app_sold AS SELECT stream, count(*) AS sold FROM backstage_events
                    WHERE type = 'TicketSold' GROUP BY stream;
                    """)
            return try Row.fetchAll(db, sql: "\(rowsSQL) ORDER BY position").map(\.description)
        }
        #expect(before.count == 4)
        try old.close()

        let store = try SQLiteEventStore(path: file.path)
        try await store.database.read { db -> Void in
            let table = try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE name = 'backstage_events'")
            #expect(table?.contains("AUTOINCREMENT") == false)
            #expect(try Row.fetchAll(db, sql: "\(rowsSQL) ORDER BY position").map(\.description) == before)
            #expect(
                try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_sequence WHERE name = 'backstage_events'") == 0)
            let attached = try String.fetchAll(
                db, sql: "SELECT name FROM sqlite_master WHERE tbl_name = 'backstage_events' ORDER BY name")
            #expect(
                attached == [
                    "app_events_recorded", "backstage_events", "backstage_events_category",
                    "backstage_events_no_delete", "backstage_events_no_update", "backstage_events_type",
                    "sqlite_autoindex_backstage_events_1", "sqlite_autoindex_backstage_events_2",
                ])
            #expect(try Int.fetchOne(db, sql: "SELECT sold FROM app_sold WHERE stream = 'show-s1'") == 2)
            #expect(try String.fetchOne(db, sql: "PRAGMA integrity_check") == "ok")
            #expect(
                try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations").contains(
                    "backstage-v3-positions"))
        }
        // Events stay immutable; the keys still refuse a repeated version or event id.
        for sql in ["UPDATE backstage_events SET type = 'X'", "DELETE FROM backstage_events WHERE position = 4"] {
            await #expect(throws: (any Error).self) {
                try await store.database.write { db in try db.execute(sql: sql) }
            }
        }
        let storedID = try #require(
            try await store.readStream("show-s1", from: 1, direction: .forward, limit: 1).first?.id)
        await #expect(throws: EventStoreError.invalidInput("event id \(storedID) is already stored")) {
            _ = try await store.append(
                [EventData(id: storedID, type: "TicketSold", data: Data("{}".utf8))], to: "show-s9",
                expected: .noStream,
                commandID: nil)
        }
        await #expect(throws: EventStoreError.wrongExpectedVersion(stream: "show-s1", expected: .exact(3), actual: 4)) {
            _ = try await store.append(
                [EventData(type: "TicketSold", data: Data("{}".utf8))], to: "show-s1", expected: .exact(3),
                commandID: nil)
        }
        // New events follow the largest position, in one append and in a group.
        let next = try await store.append(
            [
                EventData(type: "TicketSold", data: Data("{}".utf8)),
                EventData(type: "TicketSold", data: Data("{}".utf8)),
            ],
            to: "show-s1", expected: .exact(4), commandID: UUIDv7.next())
        #expect([next.firstPosition, next.lastPosition] == [5, 6])
        let group = try await store.appendAsOneGroup([
            ([EventData(type: "ShowScheduled", data: Data("{}".utf8))], "show-s3", .noStream, UUIDv7.next()),
            ([EventData(type: "ShowScheduled", data: Data("{}".utf8))], "show-s4", .noStream, nil),
        ])
        #expect(try group.outcomes.map { try $0.get().firstPosition } == [7, 8])
        try await store.close()
    }

    @Test("an events table the store did not create is refused with the definition in the error, and left as it was")
    func refusesForeignEventsTable() async throws {
        let file = try TemporaryDatabase()
        let old = try await olderFile(at: file.path) {
            $0.replacingOccurrences(
                of: "position INTEGER PRIMARY KEY AUTOINCREMENT",
                with: "position INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT")
        }
        try old.close()
        do {
            _ = try SQLiteEventStore(path: file.path)
            Issue.record("the store opened a file whose events table it did not create")
        } catch let error as SQLiteStoreError {
            #expect("\(error)".contains("the events table's definition is not the store's"))
            #expect("\(error)".contains("position INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT"))
        }
        let after = try await DatabaseQueue(path: file.path).read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM backstage_events"),
                try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations").contains(
                    "backstage-v3-positions")
            )
        }
        #expect(after.0 == 4)
        #expect(after.1 == false)
    }

    @Test(
        "two processes that open an older file at the same moment both open it: one builds the events table again, the other waits for it"
    )
    func twoProcessesOpenAnOlderFile() async throws {
        let file = try TemporaryDatabase()
        let old = try await olderFile(at: file.path)
        try await old.writeWithoutTransaction { db in
            // Enough events that the first process is still building the table again when the
            // second one lists the migrations to run (the workers' projection reads none of them).
            try db.inTransaction {
                let insert = try db.makeStatement(
                    sql: """
                        INSERT INTO backstage_events (stream, category, version, id, type, schema_version, data, recorded_at)
                        VALUES (?, 'filler', 1, ?, 'Filler', 1, '{}', 0)
                        """)
                for i in 0..<200_000 { try insert.execute(arguments: ["filler-\(i)", UUIDv7.next()]) }
                return .commit
            }
            _ = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
        }
        try old.close()

        let workers = try (0..<2).map { _ in try SQLiteWorkerProcess(["project", file.path]) }
        defer { for worker in workers { worker.kill() } }
        _ = try await pollUntil(timeout: .seconds(120)) {
            workers.allSatisfy { $0.output.contains("started") } || workers.contains { !$0.process.isRunning }
        }
        for worker in workers {
            #expect(worker.output.contains("started"), "a worker did not open the file: exit \(worker.exitDescription)")
        }
        for worker in workers { worker.kill() }

        let check = try DatabaseQueue(path: file.path)
        let (events, recorded, table) = try await check.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM backstage_events"),
                try Int.fetchOne(
                    db, sql: "SELECT count(*) FROM grdb_migrations WHERE identifier = 'backstage-v3-positions'"),
                try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE name = 'backstage_events'")
            )
        }
        #expect(events == 200_004)
        #expect(recorded == 1)
        #expect(table?.contains("AUTOINCREMENT") == false)
        try check.close()
    }

    @Test(
        "a store opening an older file while another connection holds the write lock past the busy timeout waits for it, then migrates"
    )
    func migrationWaitsPastBusyTimeout() async throws {
        let file = try TemporaryDatabase()
        let other = try await olderFile(at: file.path)
        try await other.writeWithoutTransaction { db in
            _ = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
            // A file in use: its WAL holds a transaction (GRDB writes one when it opens a pool on
            // an empty WAL, which would wait for the lock before the migrations do).
            try db.execute(sql: "CREATE TABLE app_scratch (id INTEGER); DROP TABLE app_scratch")
        }
        var shortWait = SQLiteEventStore.Configuration()
        shortWait.busyTimeout = .milliseconds(100)
        let configuration = shortWait
        let path = file.path
        let held = Duration.seconds(1)
        let start = ContinuousClock.now
        // Another connection (another process, say) holds the write lock ten busy timeouts long.
        let opening = try await other.writeWithoutTransaction { db in
            try db.execute(sql: "BEGIN IMMEDIATE")
            let opening = Task.detached { try SQLiteEventStore(path: path, configuration: configuration) }
            Thread.sleep(forTimeInterval: Double(held.components.seconds))
            try db.execute(sql: "COMMIT")
            return opening
        }
        let store = try await opening.value
        #expect(ContinuousClock.now - start >= held)
        #expect(try await store.readAll(after: .start, limit: 10, filter: .all).map(\.position) == [1, 2, 3, 4])
        let table = try await store.database.read { db in
            try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE name = 'backstage_events'")
        }
        #expect(table?.contains("AUTOINCREMENT") == false)
        try await store.close()
        try other.close()
    }

    @Test("the queries of the QueryingEventData article answer on a box-office log")
    func documentedQueries() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        func json(_ object: [String: Any]) throws -> Data {
            try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        }
        for (show, title, capacity) in [("s1", "Hamlet", 4), ("s2", "Tosca", 2)] {
            _ = try await store.append(
                [
                    EventData(
                        type: "ShowScheduled", data: try json(["showID": show, "title": title, "capacity": capacity]))
                ],
                to: "show-\(show)", expected: .noStream, commandID: nil)
        }
        func sell(_ show: String, _ ticket: String, _ buyer: String) async throws {
            _ = try await store.append(
                [EventData(type: "TicketSold", data: try json(["showID": show, "ticketID": ticket, "buyer": buyer]))],
                to: "show-\(show)", expected: .any, commandID: nil)
        }
        func refund(_ show: String, _ ticket: String) async throws {
            _ = try await store.append(
                [EventData(type: "TicketRefunded", data: try json(["showID": show, "ticketID": ticket]))],
                to: "show-\(show)", expected: .any, commandID: nil)
        }
        try await sell("s1", "t1", "ana")
        try await sell("s1", "t2", "bo")
        try await sell("s1", "t3", "ana")
        try await refund("s1", "t3")
        try await sell("s2", "t1", "bo")
        try await refund("s1", "t2")
        try await sell("s2", "t2", "cy")

        let answers = try await store.database.read { db -> [[String]] in
            let best = try Row.fetchAll(
                db,
                sql: """
                    SELECT json_extract(data, '$.showID') AS show, count(*) AS sold
                    FROM backstage_events
                    WHERE type = 'TicketSold'
                    GROUP BY show
                    ORDER BY sold DESC
                    LIMIT 10
                    """
            ).map { "\($0["show"] as String)=\($0["sold"] as Int)" }
            let refunds = try Row.fetchAll(
                db,
                sql: """
                    SELECT json_extract(sold.data, '$.buyer') AS buyer, count(*) AS refunds
                    FROM backstage_events AS refunded
                    JOIN backstage_events AS sold
                      ON sold.stream = refunded.stream
                     AND sold.type = 'TicketSold'
                     AND sold.position < refunded.position
                     AND json_extract(sold.data, '$.ticketID') = json_extract(refunded.data, '$.ticketID')
                    WHERE refunded.type = 'TicketRefunded'
                    GROUP BY buyer
                    ORDER BY refunds DESC
                    """
            ).map { "\($0["buyer"] as String)=\($0["refunds"] as Int)" }
            let occupancy = try Row.fetchAll(
                db,
                sql: """
                    SELECT json_extract(scheduled.data, '$.title') AS title,
                           json_extract(scheduled.data, '$.capacity') AS capacity,
                           (SELECT count(*) FROM backstage_events AS sold
                             WHERE sold.stream = scheduled.stream AND sold.type = 'TicketSold') AS sold
                    FROM backstage_events AS scheduled
                    WHERE scheduled.type = 'ShowScheduled'
                    ORDER BY sold * 1.0 / capacity DESC
                    """
            ).map { "\($0["title"] as String)=\($0["sold"] as Int)/\($0["capacity"] as Int)" }
            return [best, refunds.sorted(), occupancy]
        }
        #expect(answers == [["s1=3", "s2=2"], ["ana=1", "bo=1"], ["Tosca=2/2", "Hamlet=3/4"]])
        try await store.close()
    }
}
