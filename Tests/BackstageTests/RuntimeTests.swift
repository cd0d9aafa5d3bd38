import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import Synchronization
import Testing

@Suite("Aggregate runtime")
struct RuntimeTests {
    // MARK: One at a time per aggregate, in parallel across aggregates

    @Test("commands for one aggregate run one at a time")
    func oneAtATime() async throws {
        let probe = DecideProbe()
        let store = RecordingEventStore(
            beforeAppend: { _ in
                // Widen the window in which a second decision could slip in.
                for _ in 0..<5 { await Task.yield() }
            },
            afterAppend: { stream in probe.exit(stream) })
        let app = try makeApp(store)
        let results = try await withThrowingTaskGroup(of: Dispatched<Counter>.self) { group in
            for _ in 0..<200 {
                group.addTask { try await app.dispatch(Increment(id: "c", probe: probe)) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(probe.maxActive == 1)
        #expect(probe.decisions == 200)
        #expect(results.map(\.retries).reduce(0, +) == 0)  // serialised: no conflicts
        #expect(Set(results.map(\.version)) == Set(1...200))
        #expect(results.map(\.state.count).max() == 200)
        #expect(try await store.streamVersion("counter-c") == 200)
        #expect(try await app.load(Counter.self, id: "c").state.count == 200)
    }

    @Test("commands for different aggregates run in parallel")
    func parallelAcrossAggregates() async throws {
        let aggregates = 8
        let rendezvous = Rendezvous(parties: aggregates)
        let met = Journal()
        let store = RecordingEventStore(beforeAppend: { stream in
            // Every append waits until all eight are in flight at once: only possible in parallel.
            met.record(await rendezvous.arrive() ? "met" : "alone \(stream)")
        })
        let app = try makeApp(store)
        let timeout = Task {
            try await Task.sleep(for: .seconds(20))
            rendezvous.giveUp()
        }
        defer { timeout.cancel() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<aggregates {
                group.addTask { try await app.dispatch(Increment(id: "p\(i)")) }
            }
            try await group.waitForAll()
        }
        #expect(met.all == Array(repeating: "met", count: aggregates))
    }

    // MARK: Cache

    @Test("the cache is bounded by count and keeps the most recently used")
    func cacheBoundedByCount() async throws {
        let store = RecordingEventStore()
        let capacity = 10
        let app = try makeApp(store) { $0.cacheCapacity = capacity }
        var largest = 0
        for i in 0..<100 {
            try await app.dispatch(Increment(id: "n\(i)"))
            largest = max(largest, app.cachedAggregateCount)
        }
        #expect(largest <= capacity + capacity / 8 + 1)
        #expect(app.cachedAggregateCount >= capacity)

        store.forget()
        try await app.dispatch(Increment(id: "n99"))  // recently used: still hydrated, reads nothing
        #expect(store.readsFrom("counter-n99") == [])
        try await app.dispatch(Increment(id: "n0"))  // evicted long ago: loaded again
        #expect(store.readsFrom("counter-n0") == [1])
        #expect(try await app.load(Counter.self, id: "n0").state.count == 2)

        // Many at once: entries in use stay, the next dispatch trims back.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<300 { group.addTask { try await app.dispatch(Increment(id: "m\(i)")) } }
            try await group.waitForAll()
        }
        try await app.dispatch(Increment(id: "last"))
        #expect(app.cachedAggregateCount <= capacity + capacity / 8 + 1)
    }

    @Test("a capacity of 0 disables the cache")
    func noCache() async throws {
        let store = RecordingEventStore()
        let app = try makeApp(store) { $0.cacheCapacity = 0 }
        for _ in 0..<3 { try await app.dispatch(Increment(id: "x")) }
        #expect(app.cachedAggregateCount == 0)
        // The first command takes the aggregate to be new (no read); the others load it.
        #expect(store.readsFrom("counter-x") == [1, 1])
        #expect(try await app.load(Counter.self, id: "x").state.count == 3)
    }

    @Test("idle aggregates leave the cache")
    func cacheIdleTimeout() async throws {
        let store = RecordingEventStore()
        let app = try makeApp(store) { $0.cacheIdleTimeout = .milliseconds(500) }
        for i in 0..<5 { try await app.dispatch(Increment(id: "i\(i)")) }
        #expect(app.cachedAggregateCount == 5)
        // Idle time is the rule under test, so time has to pass.
        try await Task.sleep(for: .milliseconds(1_200))
        try await app.dispatch(Increment(id: "fresh"))
        #expect(app.cachedAggregateCount == 1)
        store.forget()
        try await app.dispatch(Increment(id: "i0"))
        #expect(store.readsFrom("counter-i0") == [1])
        #expect(try await app.load(Counter.self, id: "i0").state.count == 2)
    }

    @Test("a cached aggregate reads nothing while it is current, and only the events it has not seen when it is behind")
    func cachedReadsTail() async throws {
        let shared = InMemoryEventStore()
        let store = RecordingEventStore(shared)
        let app = try makeApp(store)
        let other = try makeApp(shared)  // a second process on the same store
        for _ in 0..<3 { try await app.dispatch(Increment(id: "t")) }
        // New, so not read at first; then cached and current, so not read either.
        #expect(store.readsFrom("counter-t") == [])

        try await other.dispatch(Increment(id: "t"))
        try await other.dispatch(Increment(id: "t", events: 2))
        let result = try await app.dispatch(Increment(id: "t"))
        #expect(result.retries == 0)  // the store said it was behind: caught up on versions 4...6, decided again
        #expect(result.version == 7)
        #expect(result.state.count == 7)
        #expect(store.readsFrom("counter-t") == [4])
    }

    // MARK: Conflicts between processes

    @Test("two applications on one store retry conflicts and end in the right state")
    func twoApplications() async throws {
        let shared = InMemoryEventStore()
        let apps = try [makeApp(shared) { $0.maxConflictRetries = 50 }, makeApp(shared) { $0.maxConflictRetries = 50 }]
        let counters = 4
        let perApp = 160
        let results = try await withThrowingTaskGroup(of: Dispatched<Counter>.self) { group in
            for (a, app) in apps.enumerated() {
                for i in 0..<perApp {
                    group.addTask { try await app.dispatch(Increment(id: "shared\((i + a) % counters)")) }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 2 * perApp)
        for c in 0..<counters {
            let expected = 2 * perApp / counters
            #expect(try await shared.streamVersion("counter-shared\(c)") == Int64(expected))
            #expect(try await apps[0].load(Counter.self, id: "shared\(c)").state.count == expected)
            // Each application's next command starts from the other's events (after a retry if stale).
            #expect(try await apps[0].dispatch(Increment(id: "shared\(c)")).state.count == expected + 1)
            #expect(try await apps[1].dispatch(Increment(id: "shared\(c)")).state.count == expected + 2)
        }
        for c in 0..<counters {
            let versions = results.filter { $0.stream == "counter-shared\(c)" }.map(\.version)
            #expect(Set(versions).count == versions.count)  // every command got its own version
        }
    }

    @Test("with no retries the typed conflict surfaces, and the next command recovers")
    func conflictSurfaces() async throws {
        let shared = InMemoryEventStore()
        let interfere = Locked(0)
        // Another writer appends before the next two appends of this app: the first makes the
        // cached state stale (read and decided again), the second gets in between that catch-up
        // and the append.
        let store = interferedStore(shared, interferences: interfere)
        let app = try makeApp(store) { $0.maxConflictRetries = 0 }
        try await app.dispatch(Increment(id: "k"))
        interfere.withLock { $0 = 2 }
        await #expect(throws: EventStoreError.wrongExpectedVersion(stream: "counter-k", expected: .exact(2), actual: 3))
        {
            try await app.dispatch(Increment(id: "k"))
        }
        #expect(try await shared.streamVersion("counter-k") == 3)
        let next = try await app.dispatch(Increment(id: "k"))
        #expect(next.version == 4)
        #expect(next.state.count == 4)
    }

    @Test("conflicts are retried a bounded number of times")
    func boundedRetries() async throws {
        let shared = InMemoryEventStore()
        let foreign = EventData(type: "CounterIncremented", data: Data(#"{"by":1}"#.utf8))
        let armed = Mutex(false)
        // Another writer always gets in first, once the aggregate exists.
        let store = RecordingEventStore(
            shared,
            beforeAppend: { stream in
                guard armed.withLock({ $0 }) else { return }
                var event = foreign
                event.id = UUIDv7.next()
                _ = try await shared.append([event], to: stream, expected: .any, commandID: nil)
            })
        let app = try makeApp(store) { $0.maxConflictRetries = 2 }
        try await app.dispatch(Increment(id: "r"))  // version 1, cached
        armed.withLock { $0 = true }
        await #expect(throws: EventStoreError.wrongExpectedVersion(stream: "counter-r", expected: .exact(4), actual: 5))
        {
            try await app.dispatch(Increment(id: "r"))
        }
        // The first command; then an attempt on the cached state (found behind: no retry yet),
        // one on the caught-up state and two retries.
        #expect(store.appendCount("counter-r") == 5)
        #expect(try await shared.streamVersion("counter-r") == 5)  // then only the other writer's events
    }

    // MARK: Snapshots

    @Test("snapshots are saved every N events and used on load")
    func snapshots() async throws {
        let shared = InMemoryEventStore()
        let store = RecordingEventStore(shared)
        let app = try makeApp(store) { $0.snapshotEvery = 5 }
        for _ in 0..<16 { try await app.dispatch(Increment(id: "s")) }
        #expect(store.savedSnapshotVersions("counter-s") == [5, 10, 15])
        try await app.dispatch(Increment(id: "s", events: 3))  // 19: no multiple of 5 crossed
        try await app.dispatch(Increment(id: "s", events: 3))  // 22: crossed 20
        #expect(store.savedSnapshotVersions("counter-s") == [5, 10, 15, 22])
        let snapshot = try #require(try await shared.loadSnapshot("counter-s", schemaVersion: 1))
        #expect(try JSONDecoder().decode(Counter.self, from: snapshot.data) == Counter.replayed(22))

        // A fresh application starts from the snapshot and reads only the events after it.
        let fresh = RecordingEventStore(shared)
        let second = try makeApp(fresh) { $0.snapshotEvery = 5 }
        let result = try await second.dispatch(Increment(id: "s"))
        #expect(fresh.snapshotLoads("counter-s") == 1)
        #expect(fresh.readsFrom("counter-s") == [23])
        #expect(result.version == 23)
        #expect(result.state == Counter.replayed(23))

        // Without snapshots configured, the whole stream is read.
        let plain = RecordingEventStore(shared)
        let third = try makeApp(plain)
        #expect(try await third.dispatch(Increment(id: "s")).state.count == 24)
        #expect(plain.readsFrom("counter-s") == [1])
        #expect(plain.snapshotLoads("counter-s") == 0)
        #expect(plain.savedSnapshotVersions("counter-s") == [])
    }

    @Test("per-category snapshot intervals win over the default")
    func snapshotIntervals() async throws {
        let store = RecordingEventStore()
        let app = try makeApp(store) {
            $0.snapshotEvery = 100
            $0.snapshotIntervals = ["counter": 3]
        }
        for _ in 0..<7 { try await app.dispatch(Increment(id: "q")) }
        try await app.dispatch(OpenAccount(id: "q", owner: "Q"))
        #expect(store.savedSnapshotVersions("counter-q") == [3, 6])
        #expect(store.savedSnapshotVersions("account-q") == [])
    }

    @Test("a changed snapshot schema version ignores old snapshots")
    func snapshotSchemaVersion() async throws {
        let shared = InMemoryEventStore()
        let app = try makeApp(shared) { $0.snapshotEvery = 4 }
        for _ in 0..<9 { try await app.dispatch(Increment(id: "v")) }
        #expect(try await shared.loadSnapshot("counter-v", schemaVersion: 1)?.version == 8)

        var router = Router()
        try router.route(IncrementV2.self, id: \.id) { _, _ in [.incremented(CounterIncremented(by: 1))] }
        var configuration = BackstageApp.Configuration()
        configuration.snapshotEvery = 4
        let store = RecordingEventStore(shared)
        let upgraded = BackstageApp(store: store, router: router, configuration: configuration)
        let result = try await upgraded.dispatch(IncrementV2(id: "v"))
        #expect(store.readsFrom("counter-v") == [1])  // the version-1 snapshot was not used
        #expect(result.state.count == 10)
        #expect(result.state.applied == 10)
        for _ in 0..<2 { try await upgraded.dispatch(IncrementV2(id: "v")) }
        #expect(store.savedSnapshotVersions("counter-v") == [10, 12])
        #expect(try await shared.loadSnapshot("counter-v", schemaVersion: 2)?.version == 12)
    }
}

extension Counter {
    /// The state after `n` increments by 1.
    static func replayed(_ n: Int) -> Counter {
        var c = Counter()
        for _ in 0..<n { c.apply(.incremented(CounterIncremented(by: 1))) }
        return c
    }
}

/// A store over `shared` where another writer appends a `CounterIncremented` event to the stream
/// just before each append of this store, as long as `interferences` (counted down) is positive.
func interferedStore(_ shared: InMemoryEventStore, interferences: Locked<Int>) -> RecordingEventStore {
    RecordingEventStore(
        shared,
        beforeAppend: { stream in
            let interferes = interferences.withLock { n in
                guard n > 0 else { return false }
                n -= 1
                return true
            }
            guard interferes else { return }
            let foreign = EventData(type: "CounterIncremented", data: Data(#"{"by":1}"#.utf8))
            _ = try await shared.append([foreign], to: stream, expected: .any, commandID: nil)
        })
}
