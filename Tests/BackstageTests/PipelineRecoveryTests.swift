import Backstage
import BackstageTestSupport
import Foundation
import Synchronization
import Testing

/// A lease registry shared by services in one test: one holder per subscription, increasing
/// tokens, leases a test can revoke (a lost lease) or withhold (a standby that never leads).
final class TestLeases: LeaderElection {
    private struct State {
        var holders: [String: Int64] = [:]
        var next: Int64 = 0
        var grants: [String: Int] = [:]
        var withheld: Set<String> = []
        var waiting = 0
        var runs = 0
        var runsEnded = 0
    }
    private let state = Mutex(State())

    func acquire(_ subscription: String) async throws -> Int64 {
        state.withLock { $0.waiting += 1 }
        defer { state.withLock { $0.waiting -= 1 } }
        while true {
            let token = state.withLock { s -> Int64? in
                guard s.holders[subscription] == nil, !s.withheld.contains(subscription) else { return nil }
                s.next += 1
                s.holders[subscription] = s.next
                s.grants[subscription, default: 0] += 1
                return s.next
            }
            if let token { return token }
            // Honours cancellation, like a real election must.
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    func isLeader(_ subscription: String, token: Int64) async -> Bool {
        state.withLock { $0.holders[subscription] == token }
    }

    func release(_ subscription: String, token: Int64) async {
        state.withLock { s in
            if s.holders[subscription] == token { s.holders[subscription] = nil }
        }
    }

    func run() async throws {
        state.withLock { $0.runs += 1 }
        defer { state.withLock { $0.runsEnded += 1 } }
        while true { try await Task.sleep(for: .seconds(3600)) }
    }

    /// Takes the lease away from its holder (as a dropped lease connection does).
    func revoke(_ subscription: String) {
        state.withLock { _ = $0.holders.removeValue(forKey: subscription) }
    }

    /// Never grants `subscription` (this process is a standby for it).
    func withhold(_ subscription: String) {
        state.withLock { _ = $0.withheld.insert(subscription) }
    }

    func holder(_ subscription: String) -> Int64? { state.withLock { $0.holders[subscription] } }
    func grants(_ subscription: String) -> Int { state.withLock { $0.grants[subscription] ?? 0 } }
    var waiting: Int { state.withLock { $0.waiting } }
    var runs: (started: Int, ended: Int) { state.withLock { ($0.runs, $0.runsEnded) } }
}

/// Polls `condition` until it holds; fails after `timeout`.
func eventually(
    _ what: String, timeout: Duration = .seconds(20), _ condition: @Sendable () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while !(try await condition()) {
        if ContinuousClock.now > deadline { throw PipeTimeout(what: what) }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// The outcome of `task` within `timeout`, or nil (the task is then cancelled).
func finishes(_ task: Task<Void, any Error>, within timeout: Duration) async -> Bool {
    let done = PipeBox(false)
    let watcher = Task {
        _ = try? await task.value
        done.with { $0 = true }
    }
    let deadline = ContinuousClock.now + timeout
    while !done.value, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
    let finished = done.value
    if !finished { task.cancel() }
    _ = await watcher.value
    return finished
}

struct ConnectionLost: Error, CustomStringConvertible {
    var description: String { "connection lost while committing (outcome unknown)" }
}

/// A projection whose batch containing `failAt` commits and then throws, once: an ambiguous
/// COMMIT (the server committed, the client saw the connection drop).
final class AmbiguousCommitProjection: Projection {
    let inner: InMemoryProjection<AppliedLog>
    let failAt: Int64
    let failed = PipeBox(false)

    init(failAt: Int64, options: ProjectionOptions) {
        inner = appliedLogProjection("ambiguous", options: options)
        self.failAt = failAt
    }

    var name: String { inner.name }
    var filter: EventFilter { inner.filter }
    var options: ProjectionOptions { inner.options }
    var checkpoints: any CheckpointStore { inner.checkpoints }
    func activeVersion() async throws -> Int { try await inner.activeVersion() }
    func prepare(version: Int) async throws { try await inner.prepare(version: version) }
    func activate(version: Int, replacing old: Int) async throws {
        try await inner.activate(version: version, replacing: old)
    }
    func apply(_ events: [RecordedEvent], version: Int, commit: ProjectionCommit) async throws {
        try await inner.apply(events, version: version, commit: commit)
        if case .checkpoint = commit, events.contains(where: { $0.position == failAt }),
            failed.with({ f -> Bool in
                defer { f = true }
                return !f
            })
        {
            throw ConnectionLost()
        }
    }
}

@Suite("Pipelines: recovery from lost leases, ambiguous commits, concurrent replays, shutdown")
struct PipelineRecoveryTests {
    @Test(
        "a projection that loses its lease becomes a candidate again, resumes from its checkpoint; .strong still succeeds"
    )
    func projectionRecoversFromLostLease() async throws {
        let store = InMemoryEventStore()
        let app = try tallyApp(store)
        let leases = TestLeases()
        let totals = InMemoryProjection(name: "totals", initial: [String: Int]()) { totals, event in
            if let bumped = try event.decode(as: TallyBumped.self) { totals[event.stream, default: 0] += bumped.by }
        }
        let service = try PipelineService(app: app, projections: [totals], leadership: leases)
        let running = RunningService(service)
        let strong = DispatchOptions(consistency: .strong, timeout: .seconds(10))
        try await app.dispatch(Bump(id: "a", by: 1), options: strong)
        #expect(leases.grants("totals@v1") == 1)
        leases.revoke("totals@v1")
        // The next batch finds the lease lost: the runner must give up and run again.
        try await app.dispatch(Bump(id: "a", by: 2), options: strong)
        try await app.dispatch(Bump(id: "a", by: 3), options: strong)
        #expect(totals.state["tally-a"] == 6)
        #expect(leases.grants("totals@v1") == 2)
        try await running.stop()
    }

    @Test("a handler that loses its lease becomes a candidate again and keeps handling")
    func handlerRecoversFromLostLease() async throws {
        let store = InMemoryEventStore()
        let leases = TestLeases()
        let handled = PipeBox(Set<Int64>())
        let handler = ClosureHandler(name: "h") { batch in handled.with { for e in batch { $0.insert(e.position) } } }
        let service = try PipelineService(store: store, handlers: [handler], leadership: leases)
        let running = RunningService(service)
        try await appendTicks(store, count: 10, streams: 2)
        try await service.waitUntilProcessed(LogPosition(position: 10))
        leases.revoke("h")
        try await appendTicks(store, count: 10, streams: 2, prefix: "later")
        try await eventually("the handler handled the later events") { handled.value.count == 20 }
        try await eventually("the handler leads again") { leases.grants("h") == 2 }
        try await service.waitUntilProcessed(LogPosition(position: 20), timeout: .seconds(10))
        try await running.stop()
    }

    @Test(
        "an ambiguous commit (committed, then the connection dropped) restarts from the committed checkpoint; nothing applied twice"
    )
    func ambiguousCommit() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 100, streams: 4)
        let projection = AmbiguousCommitProjection(
            failAt: 30,
            options: ProjectionOptions(
                batchSize: 10, batchTimeout: .zero,
                failurePolicy: FailurePolicy(maxRetries: 3, initialBackoff: .milliseconds(1), finalAction: .stop)))
        let service = try PipelineService(store: store, projections: [projection])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 100), timeout: .seconds(10))
        #expect(projection.failed.value, "the ambiguous commit happened")
        try await appendTicks(store, count: 50, streams: 4, prefix: "later")
        try await service.waitUntilProcessed(LogPosition(position: 150), timeout: .seconds(10))
        try await running.stop()
        let counts = projection.inner.state.counts
        #expect(counts.count == 150)
        #expect(counts.values.allSatisfy { $0 == 1 }, "an event was applied twice")
    }

    @Test("eight concurrent replays of one parked event handle it once; the losers get parkedEventNotFound")
    func concurrentReplays() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 10, streams: 2)
        let broken = PipeBox(true)
        let handled = PipeBox([Int64: Int]())
        var options = HandlerOptions()
        options.failurePolicy = FailurePolicy(maxRetries: 0, finalAction: .park)
        let handler = ClosureHandler(name: "h", options: options) { batch in
            for e in batch where e.position == 5 {
                if broken.value { throw PipeFailure(position: 5) }
                try await Task.sleep(for: .milliseconds(20))
            }
            handled.with { for e in batch { $0[e.position, default: 0] += 1 } }
        }
        let service = try PipelineService(store: store, handlers: [handler])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 10))
        #expect(try await service.parkedEvents().map(\.event.position) == [5])
        broken.with { $0 = false }
        let results = await withTaskGroup(of: Result<Void, any Error>.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    do {
                        return .success(
                            try await service.replayParked(subscription: "h", position: LogPosition(position: 5)))
                    } catch { return .failure(error) }
                }
            }
            var all: [Result<Void, any Error>] = []
            for await r in group { all.append(r) }
            return all
        }
        try await running.stop()
        #expect(handled.value[5] == 1, "the parked event was handled \(handled.value[5] ?? 0) times")
        #expect(try await service.parkedEvents().isEmpty)
        let failures = results.compactMap { r -> (any Error)? in
            if case .failure(let e) = r { return e }
            return nil
        }
        #expect(failures.count == 7)
        #expect(
            failures.allSatisfy {
                if case .parkedEventNotFound = $0 as? PipelineError { return true }
                return false
            })
        // Once replayed, it is gone for good.
        await #expect(throws: PipelineError.parkedEventNotFound(subscription: "h", position: LogPosition(position: 5)))
        {
            try await service.replayParked(subscription: "h", position: LogPosition(position: 5))
        }
    }

    @Test("a failing replay racing a discard never resurrects the discarded event")
    func replayRacingDiscard() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 10, streams: 2)
        let replaying = PipeBox(false)
        let entered = PipeCounter()
        let gate = PipeCounter()
        var options = HandlerOptions()
        options.failurePolicy = FailurePolicy(maxRetries: 0, finalAction: .park)
        let handler = ClosureHandler(name: "h", options: options) { batch in
            for e in batch where e.position == 5 {
                if replaying.value {
                    entered.add()
                    try await gate.wait(for: 1)
                }
                throw PipeFailure(position: 5)
            }
        }
        let service = try PipelineService(store: store, handlers: [handler])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 10))
        #expect(try await service.parkedEvents().map(\.event.position) == [5])
        replaying.with { $0 = true }
        let replay = Task { try await service.replayParked(subscription: "h", position: LogPosition(position: 5)) }
        try await entered.wait(for: 1)
        try await service.discardParked(subscription: "h", position: LogPosition(position: 5))
        gate.add()
        await #expect(throws: PipeFailure.self) { try await replay.value }
        #expect(try await service.parkedEvents().isEmpty, "the discarded event is parked again")
        try await running.stop()
    }

    @Test(
        "stop() ends a service waiting for a lease it never gets, and the election's run() lives as long as the service",
        .timeLimit(.minutes(1)))
    func stopWhileWaitingForLease() async throws {
        let store = InMemoryEventStore()
        let leases = TestLeases()
        leases.withhold("h")
        leases.withhold("applied@v1")
        let handler = ClosureHandler(name: "h") { _ in }
        let service = try PipelineService(
            store: store, handlers: [handler], projections: [appliedLogProjection()], leadership: leases)
        let task = Task { try await service.run() }
        try await eventually("both subscriptions wait for their leases") { leases.waiting == 2 }
        #expect(leases.runs.started == 1 && leases.runs.ended == 0)
        service.stop()
        #expect(await finishes(task, within: .seconds(5)), "the service did not stop while waiting for a lease")
        #expect(leases.runs.started == 1 && leases.runs.ended == 1)
    }
}
