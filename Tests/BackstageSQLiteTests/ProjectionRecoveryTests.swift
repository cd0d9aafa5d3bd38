import Backstage
import BackstageSQLite
import Foundation
import GRDB
import Synchronization
import Testing

/// One lease per subscription shared by the services of a test (as several processes share
/// PostgreSQL leases): one holder at a time, increasing tokens.
final class SharedTestLeases: LeaderElection {
    private let holders = Mutex<(holders: [String: Int64], next: Int64)>(([:], 0))

    func acquire(_ subscription: String) async throws -> Int64 {
        while true {
            let token = holders.withLock { s -> Int64? in
                guard s.holders[subscription] == nil else { return nil }
                s.next += 1
                s.holders[subscription] = s.next
                return s.next
            }
            if let token { return token }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    func isLeader(_ subscription: String, token: Int64) async -> Bool {
        holders.withLock { $0.holders[subscription] == token }
    }

    func release(_ subscription: String, token: Int64) async {
        holders.withLock { s in
            if s.holders[subscription] == token { s.holders[subscription] = nil }
        }
    }
}

func sqlEventually(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws
{
    let deadline = ContinuousClock.now + timeout
    while !(try await condition()) {
        if ContinuousClock.now > deadline { throw SQLiteRecoveryTimeout(what: what) }
        try await Task.sleep(for: .milliseconds(10))
    }
}

struct SQLiteRecoveryTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

@Suite("SQLite projections: concurrent replays, rebuilds across services, table ownership")
struct ProjectionRecoveryTests {
    @Test("eight concurrent replays of a parked SQLite projection event apply it once and leave nothing parked")
    func concurrentReplays() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 30, streams: 3)
        let broken = SQLBox(true)
        let projection = try SQLiteProjection(
            TotalsReadModel(failOn: { e in e.position == 7 && broken.withLock { $0 } }), database: store.database,
            options: ProjectionOptions(
                batchSize: 5, failurePolicy: FailurePolicy(maxRetries: 0, initialBackoff: .milliseconds(1))))
        let service = try PipelineService(store: store, projections: [projection])
        let running = Task { try await service.run() }
        try await service.waitUntilProcessed(LogPosition(position: 30))
        #expect(try await service.parkedEvents().map(\.event.position) == [7])
        broken.withLock { $0 = false }
        let errors = await withTaskGroup(of: (any Error)?.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    do {
                        try await service.replayParked(subscription: "totals@v1", position: LogPosition(position: 7))
                        return nil
                    } catch { return error }
                }
            }
            var all: [(any Error)?] = []
            for await e in group { all.append(e) }
            return all
        }
        service.stop()
        try await running.value
        let applied = try await store.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM totals_log WHERE position = 7")
        }
        #expect(applied == 1, "the parked event was applied \(applied ?? 0) times")
        #expect(try await service.parkedEvents().isEmpty, "the replayed event is parked again")
        #expect(errors.compactMap { $0 }.count == 7)
        #expect(
            errors.compactMap { $0 }.allSatisfy {
                if case .parkedEventNotFound = $0 as? PipelineError { return true }
                return false
            }, "\(errors.compactMap { $0 })")
        try await store.close()
    }

    @Test(
        "a rebuild in one service moves the live subscription of another service on the same database to the new version",
        .timeLimit(.minutes(1)))
    func rebuildAcrossServices() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 300, streams: 6)
        let leases = SharedTestLeases()
        let options = ProjectionOptions(
            batchSize: 20, failurePolicy: FailurePolicy(maxRetries: 1, initialBackoff: .milliseconds(1)))
        let projectionB = try SQLiteProjection(TotalsReadModel(), database: store.database, options: options)
        let b = try PipelineService(store: store, projections: [projectionB], leadership: leases)
        let runningB = Task { try await b.run() }
        try await b.waitUntilProcessed(LogPosition(position: 300))
        #expect(b.status(of: "totals")?.subscription == "totals@v1")

        // A second "process" on the same database: its live subscription waits for B's lease;
        // it rebuilds into version 2 and activates it.
        let projectionA = try SQLiteProjection(TotalsReadModel(), database: store.database, options: options)
        let a = try PipelineService(store: store, projections: [projectionA], leadership: leases)
        let runningA = Task { try await a.run() }
        #expect(try await a.rebuild(projection: "totals") == 2)
        try await appendSQLiteTicks(store, count: 100, streams: 6, prefix: "during")
        a.stop()
        try await runningA.value

        // B notices the activation through its checkpoint conflict and serves version 2.
        try await appendSQLiteTicks(store, count: 100, streams: 6, prefix: "after")
        try await sqlEventually("B serves version 2 up to the head") {
            let s = b.status(of: "totals")
            return s?.subscription == "totals@v2" && s?.checkpoint == LogPosition(position: 500)
        }
        b.stop()
        try await runningB.value
        #expect(try await projectionB.parkedEvents?.parkedEvents(subscription: nil, limit: 10).isEmpty == true)
        let (rows, distinct, sum, v1) = try await store.database.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT COUNT(*), COUNT(DISTINCT position) FROM totals_log")!
            return (
                row[0] as Int, row[1] as Int, try Int.fetchOne(db, sql: "SELECT SUM(n) FROM totals") ?? 0,
                try db.tableExists("totals_v1")
            )
        }
        #expect(rows == 500 && distinct == 500, "rows \(rows), distinct \(distinct)")
        #expect(sum == 500)
        #expect(!v1)
        try await store.close()
    }

    @Test("two read models declaring the same table fail at start, naming both")
    func sameTableTwice() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        _ = try SQLiteProjection(TotalsReadModel(name: "first"), database: store.database)
        // The same projection again (another process, a restart) is fine.
        _ = try SQLiteProjection(TotalsReadModel(name: "first"), database: store.database)
        #expect(throws: ProjectionError.tableOwned("totals", owner: "first", projection: "second")) {
            _ = try SQLiteProjection(TotalsReadModel(name: "second"), database: store.database)
        }
        try await store.close()
    }
}
