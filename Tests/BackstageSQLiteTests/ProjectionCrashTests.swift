import Backstage
import BackstageSQLite
import BackstageTesting
import Foundation
import GRDB
import Testing

/// The crash worker's read model, for the from-scratch rebuild in the test process.
struct CrashReadModelCopy: SQLiteReadModel {
    let name = "crash"
    let tables = ["crash_tally", "crash_applied"]

    func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql: """
                CREATE TABLE \(try tables.table("crash_tally")) (
                    stream TEXT PRIMARY KEY, n INTEGER NOT NULL, total INTEGER NOT NULL, last_version INTEGER NOT NULL);
                CREATE TABLE \(try tables.table("crash_applied")) (position INTEGER NOT NULL);
                """)
    }

    func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
        struct Body: Decodable { var n: Int }
        let body = try JSONDecoder().decode(Body.self, from: event.data)
        try db.execute(
            sql: """
                INSERT INTO \(try tables.table("crash_tally")) (stream, n, total, last_version) VALUES (?, 1, ?, ?)
                ON CONFLICT (stream) DO UPDATE SET n = n + 1, total = total + excluded.total,
                    last_version = excluded.last_version
                """, arguments: [event.stream, body.n, event.streamVersion])
        try db.execute(
            sql: "INSERT INTO \(try tables.table("crash_applied")) (position) VALUES (?)", arguments: [event.position])
    }
}

@Suite("SQLite projections: crash safety")
struct ProjectionCrashTests {
    @Test("a projector killed with SIGKILL at 20 random points over 50,000 events applies each event exactly once")
    func killedProjector() async throws {
        let file = try TemporaryDatabase()
        let total = 50_000
        do {
            var configuration = SQLiteEventStore.Configuration()
            configuration.durability = .off
            let store = try SQLiteEventStore(path: file.path, configuration: configuration)
            var n = 0
            while n < total {
                let events = (0..<50).map { i in EventData(type: "Tick", data: Data(#"{"n":\#(n + i)}"#.utf8)) }
                _ = try await store.append(events, to: "crash-\((n / 50) % 173)", expected: .any, commandID: nil)
                n += 50
            }
            try await store.close()
        }
        let worker = try productsDirectory().appendingPathComponent("backstage-projection-worker")
        let subscription = projectionSubscription("crash", version: 1)
        var previous = LogPosition.start
        var advanced = 0
        for round in 0..<20 {
            let batch = [37, 100, 250][round % 3]
            let lines = try await runUntilKilled(
                worker, arguments: [file.path, "run", "\(batch)"], lines: Int.random(in: 3...12))
            #expect(lines.allSatisfy { $0.hasPrefix("applied ") }, "round \(round): \(lines.prefix(3))")
            let pool = try DatabasePool(path: file.path)
            let checkpoint = try await SQLiteCheckpointStore(database: pool).checkpoint(subscription)?.position ?? .start
            let applied = try await pool.read { db in
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM crash_applied") ?? 0
            }
            try pool.close()
            // The read model and the checkpoint moved together, and never backwards.
            #expect(Int64(applied) == checkpoint.position, "round \(round): \(applied) rows, checkpoint \(checkpoint)")
            #expect(checkpoint >= previous, "round \(round): the checkpoint went back")
            if checkpoint > previous { advanced += 1 }
            previous = checkpoint
        }
        #expect(advanced >= 15, "the worker resumed and progressed after the kills")
        #expect(previous.position < Int64(total), "the kills happened during the run")

        // Finish the run.
        let finish = Process()
        finish.executableURL = worker
        finish.arguments = [file.path, "finish", "250"]
        let pipe = Pipe()
        finish.standardOutput = pipe
        try finish.run()
        let handle = pipe.fileHandleForReading
        let output = String(decoding: await onOwnThread { handle.readDataToEndOfFile() }, as: UTF8.self)
        await finish.exited()
        #expect(finish.terminationStatus == 0)
        #expect(output.contains("done \(total)"), "\(output)")

        // Every event applied exactly once.
        let pool = try DatabasePool(path: file.path)
        defer { try? pool.close() }
        let (rows, distinct, minimum, maximum) = try await pool.read { db in
            let row = try Row.fetchOne(
                db, sql: "SELECT COUNT(*), COUNT(DISTINCT position), MIN(position), MAX(position) FROM crash_applied")!
            return (row[0] as Int, row[1] as Int, row[2] as Int64, row[3] as Int64)
        }
        #expect(rows == total && distinct == total && minimum == 1 && maximum == Int64(total))

        // The read model equals a from-scratch rebuild into another database.
        let rebuildFile = try TemporaryDatabase()
        let rebuildDB = try DatabaseQueue(path: rebuildFile.path)
        let store = try SQLiteEventStore(path: file.path)
        let fresh = try SQLiteProjection(CrashReadModelCopy(), database: rebuildDB)
        let service = try PipelineService(store: store, projections: [fresh])
        let running = Task { try await service.run() }
        try await service.waitUntilProcessed(LogPosition(position: Int64(total)), timeout: .seconds(120))
        service.stop()
        try await running.value
        let query = "SELECT stream, n, total, last_version FROM crash_tally ORDER BY stream"
        let crashed = try pool.read { db in try Row.fetchAll(db, sql: query) }
        let rebuilt = try rebuildDB.read { db in try Row.fetchAll(db, sql: query) }
        #expect(crashed.count == 173)
        #expect(crashed == rebuilt)
        try await store.close()
    }
}
