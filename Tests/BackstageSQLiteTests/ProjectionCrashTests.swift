import Backstage
import BackstageSQLite
import BackstageTestSupport
import BackstageTesting
import Foundation
import GRDB
import Testing

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
            let checkpoint =
                try await SQLiteCheckpointStore(database: pool).checkpoint(subscription)?.position ?? .start
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
        let fresh = try SQLiteProjection(CrashReadModel(), database: rebuildDB)
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
