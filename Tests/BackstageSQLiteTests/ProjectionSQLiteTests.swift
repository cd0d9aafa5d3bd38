import Backstage
import BackstageSQLite
import BackstageTestSupport
import Foundation
import GRDB
import Synchronization
import Testing

/// Totals per stream, plus a log of applied positions (not unique: a double application shows).
struct TotalsReadModel: SQLiteReadModel {
    let name: String
    let tables = ["totals", "totals_log"]
    var filter: EventFilter = .all
    var failOn: @Sendable (RecordedEvent) -> Bool = { _ in false }

    init(name: String = "totals", failOn: @escaping @Sendable (RecordedEvent) -> Bool = { _ in false }) {
        self.name = name
        self.failOn = failOn
    }

    func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql: """
                CREATE TABLE \(try tables.table("totals")) (stream TEXT PRIMARY KEY, n INTEGER NOT NULL);
                CREATE TABLE \(try tables.table("totals_log")) (position INTEGER NOT NULL);
                """)
    }

    func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
        if failOn(event) { throw SQLiteTestFailure(position: event.position) }
        try db.execute(
            sql: """
                INSERT INTO \(try tables.table("totals")) (stream, n) VALUES (?, 1)
                ON CONFLICT (stream) DO UPDATE SET n = n + 1
                """, arguments: [event.stream])
        try db.execute(
            sql: "INSERT INTO \(try tables.table("totals_log")) (position) VALUES (?)", arguments: [event.position])
    }
}

/// Test bookkeeping behind a lock (BackstageTestSupport).
typealias SQLBox = TestBox

struct SQLiteTestFailure: Error, CustomStringConvertible {
    var position: Int64
    var description: String { "deliberate failure at \(position)" }
}

func appendSQLiteTicks(_ store: any EventStore, count: Int, streams: Int, prefix: String = "tick") async throws {
    var n = 0
    while n < count {
        let k = min(10, count - n)
        let events = (0..<k).map { i in EventData(type: "Tick", data: Data(#"{"n":\#(n + i)}"#.utf8)) }
        _ = try await store.append(events, to: "\(prefix)-\((n / 10) % streams)", expected: .any, commandID: nil)
        n += k
    }
}

func logStats(_ db: any DatabaseReader, table: String = "totals_log") async throws -> (rows: Int, distinct: Int) {
    try await db.read { db in
        let row = try Row.fetchOne(db, sql: "SELECT COUNT(*), COUNT(DISTINCT position) FROM \(table)")!
        return (row[0], row[1])
    }
}

@Suite("SQLite projections")
struct ProjectionSQLiteTests {
    @Test(
        "projection and handler over the SQLite store: every event once in the read model, checkpoints stored in the file"
    )
    func projectsExactlyOnce() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 3_000, streams: 17)
        let projection = try SQLiteProjection(
            TotalsReadModel(), database: store.database, options: ProjectionOptions(batchSize: 200))
        let order = SQLBox([String: Int64]())
        let outOfOrder = SQLBox(0)
        let handler = OrderCheckingHandler(order: order, outOfOrder: outOfOrder)
        let service = try PipelineService(
            store: store, handlers: [handler], projections: [projection],
            checkpoints: try SQLiteCheckpointStore(database: store.database))
        let running = Task { try await service.run() }
        try await appendSQLiteTicks(store, count: 1_000, streams: 17, prefix: "late")
        try await service.waitUntilProcessed(LogPosition(position: 4_000))
        service.stop()
        try await running.value
        let stats = try await logStats(store.database)
        #expect(stats.rows == 4_000 && stats.distinct == 4_000)
        let total = try await store.database.read { db in try Int.fetchOne(db, sql: "SELECT SUM(n) FROM totals") }
        #expect(total == 4_000, "readers query the view named after the table")
        #expect(outOfOrder.withLock { $0 } == 0)
        let checkpoints = try await SQLiteCheckpointStore(database: store.database).checkpoints()
        #expect(checkpoints.map(\.subscription) == ["orderly", "totals@v1"])
        #expect(checkpoints.allSatisfy { $0.position == LogPosition(position: 4_000) })
        try await store.close()
    }

    @Test("a query right after a .strong dispatch sees the new state in SQLite")
    func strongConsistency() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let app = try tallyApp(store)
        let projection = try SQLiteProjection(
            SQLiteSumsModel(), database: store.database,
            options: ProjectionOptions(batchSize: 500, batchTimeout: .milliseconds(200)))
        let service = try PipelineService(app: app, projections: [projection])
        let running = Task { try await service.run() }
        var expected = 0
        for i in 1...20 {
            try await app.dispatch(Bump(id: "s", by: i), options: DispatchOptions(consistency: .strong))
            expected += i
            let seen = try await store.database.read { db in
                try Int.fetchOne(db, sql: "SELECT total FROM sums WHERE stream = 'tally-s'")
            }
            #expect(seen == expected)
        }
        service.stop()
        try await running.value
        try await store.close()
    }

    @Test("rebuild into a new version while the old one serves, then readers switch and the old tables are dropped")
    func rebuildWithoutDowntime() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 2_000, streams: 10)
        let projection = try SQLiteProjection(TotalsReadModel(), database: store.database)
        let service = try PipelineService(store: store, projections: [projection])
        let running = Task { try await service.run() }
        try await service.waitUntilProcessed(LogPosition(position: 2_000))

        // Readers keep querying the view during the rebuild.
        let readerErrors = SQLBox([String]())
        let reads = SQLBox(0)
        let reader = Task {
            while !Task.isCancelled {
                do {
                    let sum = try await store.database.read { db in
                        try Int.fetchOne(db, sql: "SELECT SUM(n) FROM totals")
                    }
                    if (sum ?? 0) < 2_000 { readerErrors.withLock { $0.append("saw \(sum ?? 0) rows") } }
                    reads.withLock { $0 += 1 }
                } catch is CancellationError {
                    break
                } catch {
                    readerErrors.withLock { $0.append("\(error)") }
                }
                await Task.yield()
            }
        }
        async let more: Void = appendSQLiteTicks(store, count: 500, streams: 10, prefix: "during")
        let version = try await service.rebuild(projection: "totals")
        try await more
        try await service.waitUntilProcessed(LogPosition(position: 2_500))
        reader.cancel()
        _ = await reader.value
        service.stop()
        try await running.value

        #expect(version == 2)
        #expect(readerErrors.withLock { $0 }.isEmpty, "\(readerErrors.withLock { $0.prefix(3) })")
        #expect(reads.withLock { $0 } > 0)
        let (active, oldExists, newStats) = try await store.database.read { db in
            (
                try projection.activeTables(db)?.version, try db.tableExists("totals_v1"),
                try Row.fetchOne(db, sql: "SELECT COUNT(*), COUNT(DISTINCT position) FROM totals_log_v2").map {
                    [$0[0] as Int, $0[1] as Int]
                } ?? []
            )
        }
        #expect(active == 2)
        #expect(!oldExists)
        #expect(newStats == [2_500, 2_500])
        let stats = try await logStats(store.database)
        #expect(stats.rows == 2_500, "the view shows version 2")
        #expect(try await projection.checkpoints.checkpoint("totals@v1") == nil)
        try await store.close()
    }

    @Test("parked projection events are stored in SQLite, listed, replayed exactly once and discarded")
    func parkedEventsInSQLite() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 100, streams: 3)
        let broken = SQLBox(true)
        let projection = try SQLiteProjection(
            TotalsReadModel(failOn: { e in (e.position == 33 || e.position == 66) && broken.withLock { $0 } }),
            database: store.database,
            options: ProjectionOptions(
                batchSize: 20,
                failurePolicy: FailurePolicy(maxRetries: 2, initialBackoff: .milliseconds(1), finalAction: .park)))
        let service = try PipelineService(store: store, projections: [projection])
        let running = Task { try await service.run() }
        try await service.waitUntilProcessed(LogPosition(position: 100))
        let parked = try await service.parkedEvents()
        #expect(parked.map(\.event.position) == [33, 66])
        #expect(
            parked.allSatisfy { $0.attempts == 3 && $0.subscription == "totals@v1" && $0.error.contains("deliberate") })
        #expect(parked.first?.event.stream == "tick-0")
        #expect(try await logStats(store.database).rows == 98)

        broken.withLock { $0 = false }
        try await service.replayParked(subscription: "totals@v1", position: LogPosition(position: 33))
        await #expect(throws: PipelineError.self) {
            try await service.replayParked(subscription: "totals@v1", position: LogPosition(position: 33))
        }
        try await service.discardParked(subscription: "totals@v1", position: LogPosition(position: 66))
        #expect(try await service.parkedEvents().isEmpty)
        let stats = try await logStats(store.database)
        #expect(stats.rows == 99 && stats.distinct == 99)
        service.stop()
        try await running.value
        try await store.close()
    }

    @Test("checkpoint compare-and-set refuses a stale position and an older fencing token")
    func checkpointCompareAndSet() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let checkpoints = try SQLiteCheckpointStore(database: store.database)
        try await checkpoints.commit("s", expected: nil, new: LogPosition(position: 5), token: 3)
        await #expect(
            throws: CheckpointError.conflict(subscription: "s", expected: nil, actual: LogPosition(position: 5))
        ) {
            try await checkpoints.commit("s", expected: nil, new: LogPosition(position: 9), token: 3)
        }
        await #expect(throws: CheckpointError.fenced(subscription: "s", token: 2, current: 3)) {
            try await checkpoints.commit(
                "s", expected: LogPosition(position: 5), new: LogPosition(position: 9), token: 2)
        }
        try await checkpoints.commit(
            "s", expected: LogPosition(position: 5), new: LogPosition(transaction: 7, position: 9), token: 4)
        let stored = try await checkpoints.checkpoint("s")
        #expect(stored?.position == LogPosition(transaction: 7, position: 9) && stored?.token == 4)
        try await store.close()
    }

    @Test("a projection into a separate database survives a graceful shutdown mid-stream with no event applied twice")
    func separateDatabaseAndShutdown() async throws {
        let file = try TemporaryDatabase()
        let readFile = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 5_000, streams: 7)
        let readModels = try DatabaseQueue(path: readFile.path)
        let applied = SQLBox(0)
        let (reached, reachedContinuation) = AsyncStream<Void>.makeStream()
        let model = TotalsReadModel(failOn: { _ in
            if applied.withLock({
                $0 += 1
                return $0
            }) == 1_000 {
                reachedContinuation.yield()
            }
            return false
        })
        let first = try PipelineService(
            store: store,
            projections: [try SQLiteProjection(model, database: readModels, options: ProjectionOptions(batchSize: 25))])
        let running = Task { try await first.run() }
        for await _ in reached { break }
        first.stop()
        try await running.value
        let midway = try await logStats(readModels)
        #expect(midway.rows < 5_000, "stopped mid-stream")
        #expect(midway.rows == midway.distinct)
        let checkpoint = try await SQLiteCheckpointStore(database: readModels).checkpoint("totals@v1")
        #expect(checkpoint?.position.position == Int64(midway.rows), "the checkpoint was committed with the rows")

        let second = try PipelineService(store: store, projections: [try SQLiteProjection(model, database: readModels)])
        let again = Task { try await second.run() }
        try await second.waitUntilProcessed(LogPosition(position: 5_000))
        second.stop()
        try await again.value
        let end = try await logStats(readModels)
        #expect(end.rows == 5_000 && end.distinct == 5_000)
        try await store.close()
    }

    @Test("table names are allowlisted")
    func tableNames() throws {
        struct Bad: SQLiteReadModel {
            let name = "bad"
            let tables = ["tickets; DROP TABLE x"]
            func createTables(in db: Database, tables: ProjectionTables) throws {}
            func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {}
        }
        let db = try DatabaseQueue()
        #expect(throws: ProjectionError.self) { try SQLiteProjection(Bad(), database: db) }
        #expect(throws: ProjectionError.undeclaredTable("other")) {
            try ProjectionTables(version: 1, baseNames: ["tickets"]).table("other")
        }
    }
}

/// Checks that each stream's events arrive in version order.
struct OrderCheckingHandler: EventHandler {
    let name = "orderly"
    let order: SQLBox<[String: Int64]>
    let outOfOrder: SQLBox<Int>
    var options: HandlerOptions { HandlerOptions(concurrency: 4, batchSize: 10, batchTimeout: .milliseconds(1)) }

    func handle(_ event: RecordedEvent) async throws {
        order.withLock { o in
            if event.streamVersion != (o[event.stream] ?? 0) + 1 { outOfOrder.withLock { $0 += 1 } }
            o[event.stream] = event.streamVersion
        }
    }
}
