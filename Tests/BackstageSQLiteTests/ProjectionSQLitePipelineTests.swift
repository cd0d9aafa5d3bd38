import Backstage
import BackstageSQLite
import BackstageTestSupport
import BackstageTesting
import Foundation
import GRDB
import Testing

/// The shared closure handler (BackstageTestSupport).
typealias SQLiteClosureHandler = ClosureHandler

@Suite("SQLite pipelines: handlers")
struct ProjectionSQLitePipelineTests {
    @Test(
        "back-pressure on the SQLite store: with a handler slower than the writers, events in memory stay under the bound"
    )
    func backPressure() async throws {
        let file = try TemporaryDatabase()
        let sqlite = try SQLiteEventStore(path: file.path)
        let store = RecordingEventStore(sqlite)
        let handled = SQLBox(0)
        let worst = SQLBox(0)
        var options = HandlerOptions(concurrency: 2, batchSize: 4, maxInFlight: 50)
        options.pageSize = 20
        let handler = SQLiteClosureHandler(name: "slow", options: options) { batch in
            let held = store.eventsReadFromLog - handled.withLock { $0 }
            worst.withLock { $0 = max($0, held) }
            try await Task.sleep(for: .milliseconds(2))
            handled.withLock { $0 += batch.count }
        }
        let service = try PipelineService(
            store: store, handlers: [handler], checkpoints: try SQLiteCheckpointStore(database: sqlite.database))
        let running = Task { try await service.run() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<4 {
                group.addTask { try await appendSQLiteTicks(sqlite, count: 400, streams: 8, prefix: "w\(w)") }
            }
            try await group.waitForAll()
        }
        try await service.waitUntilProcessed(LogPosition(position: 1_600), timeout: .seconds(60))
        service.stop()
        try await running.value
        #expect(handled.withLock { $0 } == 1_600)
        #expect(worst.withLock { $0 } <= 50, "held \(worst.withLock { $0 }) events")
        #expect(worst.withLock { $0 } > 10)
        #expect(try #require(service.status(of: "slow")).peakInFlight <= 50)
        try await sqlite.close()
    }

    @Test(
        "on the SQLite store, a failing event parks in the SQLite dead-letter table; the checkpoint moves on, nothing after it is lost"
    )
    func parkInSQLite() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 500, streams: 9)
        let handled = SQLBox(Set<Int64>())
        var options = HandlerOptions(concurrency: 8, batchSize: 16, batchTimeout: .milliseconds(1))
        options.failurePolicy = FailurePolicy(maxRetries: 2, initialBackoff: .milliseconds(1), finalAction: .park)
        let handler = SQLiteClosureHandler(name: "picky", options: options) { batch in
            if let bad = batch.first(where: { $0.position == 123 }) { throw SQLiteTestFailure(position: bad.position) }
            handled.withLock { for e in batch { $0.insert(e.position) } }
        }
        let parked = try SQLiteParkedEventStore(database: store.database)
        let checkpoints = try SQLiteCheckpointStore(database: store.database)
        let service = try PipelineService(
            store: store, handlers: [handler], checkpoints: checkpoints, parkedEvents: parked)
        let running = Task { try await service.run() }
        try await service.waitUntilProcessed(LogPosition(position: 500))
        service.stop()
        try await running.value
        #expect(handled.withLock { $0 } == Set(1...500).subtracting([123]))
        let stored = try await parked.parkedEvents(subscription: "picky", limit: 10)
        #expect(stored.map(\.event.position) == [123])
        #expect(stored.first?.attempts == 3)
        #expect(try await checkpoints.checkpoint("picky")?.position == LogPosition(position: 500))
        try await store.close()
    }
}
