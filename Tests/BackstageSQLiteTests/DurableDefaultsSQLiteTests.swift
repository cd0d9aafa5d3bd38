import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import GRDB
import Synchronization
import Testing

@testable import BackstageSQLite

/// A handler that records the positions it handled (duplicates included).
struct RecordingHandler: EventHandler {
    let name: String
    let handled: SQLBox<[Int64]>
    var options: HandlerOptions {
        var o = HandlerOptions()
        o.pollInterval = .milliseconds(50)
        return o
    }
    func handle(_ event: RecordedEvent) async throws { handled.withLock { $0.append(event.position) } }
}

/// A running `backstage-sqlite-worker` whose stdout lines are collected by a thread of its own.
final class SQLiteWorkerProcess: Sendable {
    let process: Process
    private let lines = SQLBox<[String]>([])

    init(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = try productsDirectory().appendingPathComponent("backstage-sqlite-worker")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        self.process = process
        let lines = self.lines
        readLines(of: pipe.fileHandleForReading) { line in lines.withLock { $0.append(line) } }
    }

    /// The lines printed so far.
    var output: [String] { lines.withLock { $0 } }

    /// The positions of the `handled <position>` lines so far.
    var handled: [Int64] { output.compactMap { $0.hasPrefix("handled ") ? Int64($0.dropFirst(8)) : nil } }

    /// Waits (polling, bounded) until a line equal to `line` was printed.
    func waitFor(_ line: String, timeout: Duration = .seconds(60)) async throws -> Bool {
        try await pollUntil(timeout: timeout) { self.output.contains(line) }
    }

    /// How the process ended, or "running".
    var exitDescription: String {
        process.isRunning ? "running" : "status \(process.terminationStatus)"
    }

    func kill(_ signal: Int32 = SIGKILL) {
        if process.isRunning { Foundation.kill(process.processIdentifier, signal) }
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns its last value.
func pollUntil(timeout: Duration, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

@Suite("SQLite: durable pipeline defaults, lease leadership, strong consistency across processes")
struct DurableDefaultsSQLiteTests {
    @Test("a handler built without checkpoints resumes after a restart: no event is handled twice")
    func handlerResumesAfterRestart() async throws {
        let file = try TemporaryDatabase()
        let handled = SQLBox<[Int64]>([])
        do {
            let store = try SQLiteEventStore(path: file.path)
            try await appendSQLiteTicks(store, count: 30, streams: 3)
            let service = try PipelineService(
                store: store, handlers: [RecordingHandler(name: "receipts", handled: handled)])
            let running = Task { try await service.run() }
            try await service.waitUntilProcessed(timeout: .seconds(30))
            service.stop()
            try await running.value
            try await store.close()
        }
        #expect(handled.withLock { $0.count } == 30)
        // A new process: a new store and a new service on the same file.
        let store = try SQLiteEventStore(path: file.path)
        try await appendSQLiteTicks(store, count: 20, streams: 3, prefix: "more")
        let service = try PipelineService(
            store: store, handlers: [RecordingHandler(name: "receipts", handled: handled)])
        let running = Task { try await service.run() }
        try await service.waitUntilProcessed(timeout: .seconds(30))
        service.stop()
        try await running.value
        let all = handled.withLock { $0 }
        #expect(all.count == 50, "handled \(all.count) times for 50 events: the restart re-handled \(all.count - 50)")
        #expect(Set(all) == Set(1...50))
        try await store.close()
    }

    @Test(
        "two stores on one file race for a lease: one leads; when it stops renewing the other takes over with a higher token, and the old leader's checkpoint commit is fenced"
    )
    func leaseTakeoverAndFencing() async throws {
        let file = try TemporaryDatabase()
        let a = try SQLiteEventStore(path: file.path)
        let b = try SQLiteEventStore(path: file.path)
        var fast = SQLiteLeadership.Configuration()
        // Generous against a loaded machine (a renewal is a synced write): 10 heartbeats per lease.
        fast.leaseDuration = .seconds(2)
        fast.heartbeatInterval = .milliseconds(200)
        fast.retryInterval = .milliseconds(50)
        let electionA = try SQLiteLeadership(database: a.database, configuration: fast)
        let electionB = try SQLiteLeadership(database: b.database, configuration: fast)
        let won = SQLBox<[(String, Int64)]>([])
        let racers = [("a", electionA), ("b", electionB)].map { name, election in
            Task {
                let token = try await election.acquire("receipts")
                won.withLock { $0.append((name, token)) }
            }
        }
        // Each election's heartbeat (PipelineService runs it for its lifetime).
        let heartbeats = [electionA, electionB].map { election in Task { try await election.run() } }
        defer { for t in racers + heartbeats { t.cancel() } }
        #expect(try await pollUntil(timeout: .seconds(10)) { won.withLock { !$0.isEmpty } })
        // Two lease durations later, still one leader: the heartbeat renews the lease.
        try await Task.sleep(for: .seconds(4))
        let first = won.withLock { $0 }
        try #require(first.count == 1, "both took the lease: \(first)")
        let (leaderName, leaderToken) = first[0]
        let (leader, leaderStore, other, otherStore) =
            leaderName == "a" ? (electionA, a, electionB, b) : (electionB, b, electionA, a)
        #expect(await leader.isLeader("receipts", token: leaderToken))
        let leaderCheckpoints = try SQLiteCheckpointStore(database: leaderStore.database)
        try await leaderCheckpoints.commit(
            "receipts", expected: nil, new: LogPosition(position: 10), token: leaderToken)

        // The leader stops renewing (as a frozen process would): the other takes over.
        leader.stopRenewing()
        #expect(try await pollUntil(timeout: .seconds(10)) { won.withLock { $0.count == 2 } }, "no takeover")
        let (takerName, takerToken) = won.withLock { $0[1] }
        #expect(takerName != leaderName)
        #expect(takerToken > leaderToken)
        #expect(await !leader.isLeader("receipts", token: leaderToken))
        #expect(await other.isLeader("receipts", token: takerToken))
        // The old leader's commit is fenced, before the new leader committed anything.
        await #expect(throws: CheckpointError.fenced(subscription: "receipts", token: leaderToken, current: takerToken))
        {
            try await leaderCheckpoints.commit(
                "receipts", expected: LogPosition(position: 10), new: LogPosition(position: 20), token: leaderToken)
        }
        let otherCheckpoints = try SQLiteCheckpointStore(database: otherStore.database)
        try await otherCheckpoints.commit(
            "receipts", expected: LogPosition(position: 10), new: LogPosition(position: 12), token: takerToken)
        #expect(try await otherCheckpoints.checkpoint("receipts")?.position == LogPosition(position: 12))

        // A release hands the lease over at once.
        let third = try SQLiteLeadership(database: a.database, configuration: fast)
        let next = Task { try await third.acquire("receipts") }
        try await Task.sleep(for: .milliseconds(300))
        await other.release("receipts", token: takerToken)
        let nextToken = try await next.value
        #expect(nextToken > takerToken)
        await third.release("receipts", token: nextToken)
        try await a.close()
        try await b.close()
    }

    @Test(
        "two processes run a handler on one SQLite file without a leadership argument: only one handles; after a SIGKILL the other takes over at once",
        .timeLimit(.minutes(3)))
    func handlerInOneProcess() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let workers = try (0..<2).map { _ in try SQLiteWorkerProcess(["handle", file.path]) }
        defer { for w in workers { w.kill() } }
        for w in workers { #expect(try await w.waitFor("started")) }
        try await appendSQLiteTicks(store, count: 20, streams: 4)
        let checkpoints = try SQLiteCheckpointStore(database: store.database)
        #expect(
            try await pollUntil(timeout: .seconds(30)) {
                try await checkpoints.checkpoint("receipts")?.position == LogPosition(position: 20)
            }, "the handler did not reach the head")
        try await Task.sleep(for: .milliseconds(300))
        let handled = workers.map(\.handled)
        #expect(handled.filter { !$0.isEmpty }.count == 1, "handled in \(handled.map(\.count)) events per process")
        #expect(handled.flatMap { $0 }.sorted() == Array(1...20))

        // The leader dies; the other process sees its owner is gone and takes over well before
        // the lease would expire (10 s).
        let leader = try #require(workers.firstIndex { !$0.handled.isEmpty })
        workers[leader].kill()
        await workers[leader].process.exited()
        let killedAt = ContinuousClock.now
        try await appendSQLiteTicks(store, count: 10, streams: 4, prefix: "later")
        let survivor = workers[1 - leader]
        #expect(try await pollUntil(timeout: .seconds(30)) { survivor.handled.count >= 10 })
        #expect(ContinuousClock.now - killedAt < .seconds(8), "takeover took \(ContinuousClock.now - killedAt)")
        #expect(survivor.handled.sorted() == Array(21...30), "the survivor handled \(survivor.handled)")
        try await store.close()
    }

    @Test(
        ".strong in a process that does not lead the projection succeeds once the leading process applied; times out, with the events stored, when that process is gone",
        .timeLimit(.minutes(3)))
    func strongAcrossProcesses() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let worker = try SQLiteWorkerProcess(["project", file.path])
        defer { worker.kill() }
        #expect(try await worker.waitFor("leading"), "the worker did not start the projection: \(worker.output)")

        let app = try tallyApp(store)
        let projection = try SQLiteProjection(SQLiteSumsModel(), database: store.database)
        let service = try PipelineService(app: app, projections: [projection])
        let running = Task { try await service.run() }
        try await Task.sleep(for: .milliseconds(500))
        #expect(service.status(of: "sums") == nil, "this process must not lead the projection")
        var expected = 0
        for i in 1...5 {
            try await app.dispatch(Bump(id: "s", by: i), options: DispatchOptions(consistency: .strong))
            expected += i
            let seen = try await store.database.read { db in
                try Int.fetchOne(db, sql: "SELECT total FROM sums WHERE stream = 'tally-s'")
            }
            #expect(seen == expected, "read right after a .strong dispatch")
        }
        try await app.dispatch(
            Bump(id: "s", by: 1),
            options: DispatchOptions(consistency: .projections(["sums"]), timeout: .seconds(10)))

        // This process stops being a candidate (cancelled: it waits for the lease), and the
        // leader dies: nobody applies any more.
        running.cancel()
        try? await running.value
        worker.kill()
        await worker.process.exited()
        let before = try await store.streamVersion("tally-s")
        await #expect {
            try await app.dispatch(
                Bump(id: "s", by: 100), options: DispatchOptions(consistency: .strong, timeout: .milliseconds(800)))
        } throws: { error in
            guard case ConsistencyError.timeout = error else { return false }
            return "\(error)".contains("the events were stored")
        }
        #expect(try await store.streamVersion("tally-s") == before + 1, "the events were stored")
        try await store.close()
    }
}
