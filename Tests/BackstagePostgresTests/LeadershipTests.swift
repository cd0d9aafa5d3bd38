import Backstage
import BackstageTestSupport
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

/// A deadline passed in a leadership test.
struct TimedOut: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out: \(what)" }
}

/// Runs `body`; throws ``TimedOut`` (and cancels `body`) when it takes longer than `timeout`.
func within<T: Sendable>(
    _ timeout: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard case .some(.some(let value)) = try await group.next() else { throw TimedOut(what: what) }
        return value
    }
}

/// The value of `task`; throws ``TimedOut`` (and cancels `task`) when it takes longer than
/// `timeout`, even when `task` ignores cancellation (so a failing test does not hang).
func value<T: Sendable>(of task: Task<T, any Error>, within timeout: Duration, _ what: String) async throws -> T {
    let waiting = Locked<CheckedContinuation<T, any Error>?>(nil)
    return try await withCheckedThrowingContinuation { continuation in
        waiting.value.withLock { $0 = continuation }
        Task {
            let result = await task.result
            waiting.value.withLock { c in
                c?.resume(with: result)
                c = nil
            }
        }
        Task {
            try? await Task.sleep(for: timeout)
            waiting.value.withLock { c in
                c?.resume(throwing: TimedOut(what: what))
                c = nil
            }
            task.cancel()
        }
    }
}

/// Settings that make the tests quick.
func quickLeases(_ owner: String) -> PostgresLeadership.Configuration {
    var settings = PostgresLeadership.Configuration()
    settings.retryInterval = .milliseconds(100)
    settings.heartbeatInterval = .milliseconds(200)
    settings.owner = owner
    return settings
}

/// How many server connections of `store`'s schema hold or wait for leases.
func leaseConnections(_ store: PostgresEventStore) async throws -> Int {
    let pattern = "backstage-lease:\(store.schema.rawValue)%"
    let rows = try await store.client.query(
        "SELECT count(*)::int8 FROM pg_stat_activity WHERE application_name LIKE \(pattern)")
    for try await n in rows.decode(Int64.self) { return Int(n) }
    return 0
}

/// A session of its own (as another process would have) that runs `lock` statements, holds
/// what they took until ``stop()``, then runs `unlock`.
final class SessionHolder: Sendable {
    private let task: Task<Void, any Error>
    private let locked = Locked(false)

    init(_ store: PostgresEventStore, lock: [PostgresQuery], unlock: PostgresQuery) {
        let locked = self.locked
        task = Task {
            try await store.client.withConnection { conn in
                for statement in lock { _ = try await conn.query(statement, logger: store.queryLogger) }
                locked.value.withLock { $0 = true }
                while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(20)) }
                _ = try await conn.query(unlock, logger: store.queryLogger)
            }
        }
    }

    /// Holds the lease locks of `subscriptions`.
    convenience init(_ store: PostgresEventStore, leases subscriptions: [String]) {
        let classKey = "backstage.lease.\(store.schema.rawValue)"
        self.init(
            store,
            lock: [
                "SELECT pg_advisory_lock(hashtext(\(classKey)), hashtext(x)) FROM unnest(\(subscriptions)::text[]) x"
            ],
            unlock: "SELECT pg_advisory_unlock_all()")
    }

    /// Locks the lease row of `subscription` in an open transaction.
    convenience init(_ store: PostgresEventStore, leaseRow subscription: String) {
        self.init(
            store,
            lock: [
                "BEGIN",
                "SELECT token FROM \(unescaped: store.schema.rawValue).leases WHERE subscription = \(subscription) FOR UPDATE",
            ],
            unlock: "COMMIT")
    }

    func waitUntilLocked() async throws -> Bool { try await eventually { locked.value.withLock { $0 } } }

    func stop() async throws {
        task.cancel()
        try await task.value
    }
}

/// Whether the server process `pid` still exists.
func backendExists(_ store: PostgresEventStore, _ pid: Int32) async throws -> Bool {
    let rows = try await store.client.query("SELECT count(*)::int8 FROM pg_stat_activity WHERE pid = \(pid)")
    for try await n in rows.decode(Int64.self) { return n > 0 }
    return false
}

/// Acquisitions seen by a test: (election, subscription, token), in order.
final class Acquisitions: Sendable {
    let all = Locked<[(side: String, subscription: String, token: Int64)]>([])
    var count: Int { all.value.withLock { $0.count } }
    var list: [(side: String, subscription: String, token: Int64)] { all.value.withLock { $0 } }

    /// Starts a candidate of `election` for `subscription`, recorded when it leads.
    func candidate(_ side: String, _ election: PostgresLeadership, _ subscription: String) -> Task<Int64, any Error> {
        Task {
            let token = try await election.acquire(subscription)
            all.value.withLock { $0.append((side, subscription, token)) }
            return token
        }
    }
}

extension PostgresTests {
    @Suite("Leadership: one connection per process for every lease")
    struct Leadership {
        @Test(
            "30 subscriptions leading or waiting on a pool of 4: appends and reads go on, one lease connection",
            .timeLimit(.minutes(2)))
        func constantConnections() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store, configure: { $0.maximumConnections = 4 }) { small in
                    let subscriptions = (0..<30).map { "s\($0)" }
                    // Another session holds half the locks: 15 subscriptions lead, 15 wait.
                    let holder = SessionHolder(store, leases: Array(subscriptions[15...]))
                    #expect(try await holder.waitUntilLocked())
                    let election = PostgresLeadership(store: small, configuration: quickLeases("small"))
                    let running = Task { try await election.run() }
                    let seen = Acquisitions()
                    let candidates = subscriptions.map { seen.candidate("small", election, $0) }
                    #expect(try await eventually { seen.count == 15 }, "\(seen.count) of 15 free subscriptions lead")

                    let count = try await within(.seconds(15), "append and read on a pool of 4 with 30 subscriptions") {
                        _ = try await small.append([event()], to: "pool-1", expected: .any, commandID: nil)
                        return try await small.readAll(after: .start, limit: 10, filter: .all).count
                    }
                    #expect(count == 1)
                    #expect(try await leaseConnections(store) == 1)

                    // The other session lets go: the waiting 15 lead too, still on one connection.
                    try await holder.stop()
                    #expect(try await eventually { seen.count == 30 }, "\(seen.count) of 30 subscriptions lead")
                    #expect(try await leaseConnections(store) == 1)
                    for (_, subscription, token) in seen.list {
                        #expect(await election.isLeader(subscription, token: token))
                    }
                    for c in candidates { c.cancel() }
                    running.cancel()
                    try await value(of: running, within: .seconds(10), "run() returns when cancelled")
                }
            }
        }

        @Test(
            "two processes compete for 10 subscriptions: one leader each, newer tokens on takeover",
            .timeLimit(.minutes(2)))
        func competition() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store) { peerA in
                    try await withPeer(of: store) { peerB in
                        let a = PostgresLeadership(store: peerA, configuration: quickLeases("a"))
                        let b = PostgresLeadership(store: peerB, configuration: quickLeases("b"))
                        let runA = Task { try await a.run() }
                        let runB = Task { try await b.run() }
                        let elections = ["a": a, "b": b]
                        let subscriptions = (0..<10).map { "c\($0)" }
                        let seen = Acquisitions()
                        var candidates: [Task<Int64, any Error>] = []
                        for s in subscriptions {
                            candidates.append(seen.candidate("a", a, s))
                            candidates.append(seen.candidate("b", b, s))
                        }
                        #expect(try await eventually { seen.count >= 10 })
                        try await Task.sleep(for: .milliseconds(500))  // both keep trying meanwhile
                        let first = seen.list
                        #expect(first.count == 10, "\(first.count) leaders for 10 subscriptions")
                        #expect(Set(first.map(\.subscription)) == Set(subscriptions), "a subscription had two leaders")
                        for (side, subscription, token) in first {
                            #expect(await elections[side]!.isLeader(subscription, token: token))
                            #expect(try await leaseToken(store, subscription) == token)
                        }
                        // Every leader lets go: the other process takes over with a newer token.
                        for (side, subscription, token) in first {
                            await elections[side]!.release(subscription, token: token)
                        }
                        #expect(try await eventually { seen.count == 20 }, "\(seen.count - 10) of 10 takeovers")
                        let second = seen.list.dropFirst(10)
                        for (side, subscription, token) in second {
                            let before = try #require(first.first { $0.subscription == subscription })
                            #expect(side != before.side)
                            #expect(token > before.token)
                            #expect(await !elections[before.side]!.isLeader(subscription, token: before.token))
                            #expect(await elections[side]!.isLeader(subscription, token: token))
                        }
                        for c in candidates { c.cancel() }
                        runA.cancel()
                        runB.cancel()
                        _ = await (runA.result, runB.result)
                    }
                }
            }
        }

        @Test(
            "the lease connection is terminated: every lease is lost at once, the other process takes over, the first leads again later",
            .timeLimit(.minutes(2)))
        func terminated() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store) { peerA in
                    try await withPeer(of: store) { peerB in
                        let a = PostgresLeadership(store: peerA, configuration: quickLeases("a"))
                        let b = PostgresLeadership(store: peerB, configuration: quickLeases("b"))
                        let runA = Task { try await a.run() }
                        let subscriptions = (0..<10).map { "t\($0)" }
                        var tokensA: [String: Int64] = [:]
                        for s in subscriptions { tokensA[s] = try await a.acquire(s) }
                        let runB = Task { try await b.run() }
                        let seen = Acquisitions()
                        let waitingB = subscriptions.map { seen.candidate("b", b, $0) }
                        try await Task.sleep(for: .milliseconds(300))  // b keeps trying meanwhile
                        #expect(seen.count == 0)
                        var pids = Set<Int32>()
                        for s in subscriptions { pids.insert(try #require(try await leaseHolderPID(store, s))) }
                        #expect(pids.count == 1, "the leases are held by \(pids.count) connections")

                        _ = try await store.client.query("SELECT pg_terminate_backend(\(pids.first!))")
                        let terminatedAt = ContinuousClock.now
                        let lost = try await eventually {
                            for s in subscriptions where await a.isLeader(s, token: tokensA[s]!) { return false }
                            return true
                        }
                        #expect(lost, "a still believes it leads")
                        let noticed = ContinuousClock.now - terminatedAt
                        #expect(noticed < .seconds(3), "a noticed the loss after \(noticed)")
                        // a is a candidate again while b takes over with newer tokens.
                        let waitingA = subscriptions.map { seen.candidate("a", a, $0) }
                        #expect(try await eventually { seen.count >= 10 }, "b took over \(seen.count) of 10")
                        let takeover = seen.list
                        for (side, subscription, token) in takeover {
                            #expect(side == "b")
                            #expect(token > tokensA[subscription]!)
                            #expect(await b.isLeader(subscription, token: token))
                        }
                        // b stops: a leads again, with newer tokens still.
                        runB.cancel()
                        _ = await runB.result
                        #expect(try await eventually { seen.count == 20 }, "a leads \(seen.count - 10) of 10 again")
                        for (side, subscription, token) in seen.list.dropFirst(10) {
                            let b = try #require(takeover.first { $0.subscription == subscription })
                            #expect(side == "a")
                            #expect(token > b.token)
                            #expect(await a.isLeader(subscription, token: token))
                        }
                        #expect(try await leaseConnections(store) == 1)
                        for c in waitingA + waitingB { c.cancel() }
                        runA.cancel()
                        _ = await runA.result
                    }
                }
            }
        }

        @Test(
            "a waiting candidate ends promptly when cancelled; cancelling run() releases every lease and ends every wait",
            .timeLimit(.minutes(2)))
        func cancellation() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store) { peerA in
                    try await withPeer(of: store) { peerB in
                        let a = PostgresLeadership(store: peerA, configuration: quickLeases("a"))
                        let b = PostgresLeadership(store: peerB, configuration: quickLeases("b"))

                        // Before run() starts, acquire waits, and ends when cancelled.
                        let early = Task { try await b.acquire("x") }
                        try await Task.sleep(for: .milliseconds(100))
                        early.cancel()
                        await #expect(throws: CancellationError.self) {
                            try await value(of: early, within: .seconds(2), "a cancelled acquire before run()")
                        }

                        let runA = Task { try await a.run() }
                        let runB = Task { try await b.run() }
                        let tokenA = try await a.acquire("x")
                        let waiting = Task { try await b.acquire("x") }
                        try await Task.sleep(for: .milliseconds(300))  // b keeps trying meanwhile
                        waiting.cancel()
                        await #expect(throws: CancellationError.self) {
                            try await value(of: waiting, within: .seconds(2), "a cancelled waiting acquire")
                        }

                        // A candidate of a waits for "y", held by b.
                        let tokenB = try await b.acquire("y")
                        let waitingA = Task { try await a.acquire("y") }
                        let next = Task { try await b.acquire("x") }
                        try await Task.sleep(for: .milliseconds(300))
                        runA.cancel()
                        let stoppedAt = ContinuousClock.now
                        try await value(of: runA, within: .seconds(5), "run() returns when cancelled")
                        await #expect(throws: CancellationError.self) {
                            try await value(of: waitingA, within: .seconds(2), "a wait ended by run()'s end")
                        }
                        #expect(await !a.isLeader("x", token: tokenA))
                        let tokenX = try await value(of: next, within: .seconds(5), "b takes over x")
                        let takeover = ContinuousClock.now - stoppedAt
                        #expect(takeover < .seconds(2), "b took over after \(takeover)")
                        #expect(tokenX > tokenA)
                        #expect(await b.isLeader("y", token: tokenB))
                        runB.cancel()
                        _ = await runB.result
                        #expect(try await leaseHolderPID(store, "x") == nil)
                        #expect(try await leaseHolderPID(store, "y") == nil)
                    }
                }
            }
        }
        @Test(
            "a statement stuck on the lease connection: the connection is closed, never pooled with its locks; every lease is lost, others take over, it leads again later",
            .timeLimit(.minutes(2)))
        func stuckStatement() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store) { peerA in
                    try await withPeer(of: store) { peerB in
                        let a = PostgresLeadership(store: peerA, configuration: quickLeases("a"))
                        let b = PostgresLeadership(store: peerB, configuration: quickLeases("b"))
                        let runA = Task { try await a.run() }
                        let runB = Task { try await b.run() }
                        let tokenOK = try await a.acquire("ok")
                        let first = try #require(try await leaseHolderPID(store, "ok"))
                        // Another session locks the lease row of "z": a's token bump for "z" blocks.
                        _ = try await store.client.query(
                            "INSERT INTO \(unescaped: store.schema.rawValue).leases (subscription, token, owner) VALUES ('z', 1, 'test')"
                        )
                        let rowLock = SessionHolder(store, leaseRow: "z")
                        #expect(try await rowLock.waitUntilLocked())
                        let seen = Acquisitions()
                        let zByA = seen.candidate("a", a, "z")
                        do {
                            // Three heartbeats later the statement counts as failed: every lease of a is lost...
                            #expect(try await eventually { await !a.isLeader("ok", token: tokenOK) })
                            // ...and its connection is closed, so the server ends that session and its locks:
                            // b takes "ok" over while the row is still locked.
                            let okByB = seen.candidate("b", b, "ok")
                            let tokenB = try await value(of: okByB, within: .seconds(10), "b takes ok over")
                            #expect(tokenB > tokenOK)
                            #expect(try await backendExists(store, first) == false, "the closed session still exists")
                        } catch {
                            try await rowLock.stop()  // or dropping the schema waits for it
                            throw error
                        }
                        try await rowLock.stop()
                        // a connects again and leads "z".
                        let tokenZ = try await value(of: zByA, within: .seconds(10), "a leads z")
                        #expect(tokenZ == 2)
                        #expect(await a.isLeader("z", token: tokenZ))
                        #expect(try await leaseHolderPID(store, "z") != first)
                        #expect(try await leaseConnections(store) == 2)
                        runA.cancel()
                        runB.cancel()
                        _ = await (runA.result, runB.result)
                        #expect(try await leaseConnections(store) == 0)
                    }
                }
            }
        }
    }
}
