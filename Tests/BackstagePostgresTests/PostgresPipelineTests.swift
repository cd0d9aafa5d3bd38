import Backstage
import BackstageTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

/// Per stream: events applied and last version (the worker's `counts` read model, in-process).
struct CountsModel: PostgresReadModel {
    let name = "counts"
    let tables = ["counts"]
    let logger = Logger(label: "counts")

    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        _ = try await connection.query(
            """
            CREATE TABLE \(unescaped: try tables.table("counts")) (
                stream text PRIMARY KEY, events bigint NOT NULL, last_version bigint NOT NULL
            )
            """, logger: logger)
    }

    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws
    {
        if event.type == "Poison" { throw PoisonError() }
        _ = try await connection.query(
            """
            INSERT INTO \(unescaped: try tables.table("counts")) AS c (stream, events, last_version)
            VALUES (\(event.stream), 1, \(event.streamVersion))
            ON CONFLICT (stream) DO UPDATE SET events = c.events + 1, last_version = excluded.last_version
            """, logger: logger)
    }
}

struct PoisonError: Error {}

/// The rows of the `counts` view: stream -> (events, last version).
func readCounts(_ store: PostgresEventStore) async throws -> [String: [Int64]] {
    let rows = try await store.client.query(
        "SELECT stream, events, last_version FROM \(unescaped: store.schema.rawValue).counts")
    var counts: [String: [Int64]] = [:]
    for try await (stream, events, last) in rows.decode((String, Int64, Int64).self) {
        counts[stream] = [events, last]
    }
    return counts
}

/// The same read model computed from scratch from the log (excluding `Poison` events).
func rebuildCounts(_ store: PostgresEventStore) async throws -> [String: [Int64]] {
    var counts: [String: [Int64]] = [:]
    var position = LogPosition.start
    while true {
        let page = try await store.readAll(after: position, limit: 1_000, filter: .all)
        guard let last = page.last else { break }
        for e in page where e.type != "Poison" {
            counts[e.stream] = [(counts[e.stream]?[0] ?? 0) + 1, e.streamVersion]
        }
        position = last.logPosition
    }
    return counts
}

func leaseToken(_ store: PostgresEventStore, _ subscription: String) async throws -> Int64? {
    let rows = try await store.client.query(
        "SELECT token FROM \(unescaped: store.schema.rawValue).leases WHERE subscription = \(subscription)")
    for try await token in rows.decode(Int64.self) { return token }
    return nil
}

/// The server process holding the advisory lock of `subscription`'s lease, if any.
func leaseHolderPID(_ store: PostgresEventStore, _ subscription: String) async throws -> Int32? {
    let classKey = "backstage.lease.\(store.schema.rawValue)"
    let rows = try await store.client.query(
        """
        SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
          AND classid = hashtext(\(classKey))::oid AND objid = hashtext(\(subscription))::oid
        """)
    for try await pid in rows.decode(Int32.self) { return pid }
    return nil
}

extension PostgresTests {
    @Suite("Checkpoints, parked events, leadership, projections")
    struct Pipelines {
        @Test("checkpoint commits are compare-and-set and fenced by the lease token")
        func checkpoints() async throws {
            try await withFreshStore { store in
                let checkpoints = PostgresCheckpointStore(store: store)
                let a = LogPosition(transaction: 10, position: 3)
                let b = LogPosition(transaction: 12, position: 2)
                #expect(try await checkpoints.checkpoint("s") == nil)
                try await checkpoints.commit("s", expected: nil, new: a, token: 1)
                await #expect(throws: CheckpointError.conflict(subscription: "s", expected: nil, actual: a)) {
                    try await checkpoints.commit("s", expected: nil, new: b, token: 1)
                }
                try await checkpoints.commit("s", expected: a, new: b, token: 2)
                await #expect(throws: CheckpointError.fenced(subscription: "s", token: 1, current: 2)) {
                    try await checkpoints.commit(
                        "s", expected: b, new: LogPosition(transaction: 13, position: 9), token: 1)
                }
                #expect(try await checkpoints.checkpoint("s")?.position == b)
                // A lease row newer than the token fences too, before any commit with the new token.
                let leadership = PostgresLeadership(store: store)
                let election = Task { try await leadership.run() }
                var token: Int64 = 0
                for _ in 0..<3 {
                    token = try await leadership.acquire("s")
                    await leadership.release("s", token: token)
                }
                election.cancel()
                try await election.value
                #expect(token == 3)
                await #expect(throws: CheckpointError.fenced(subscription: "s", token: 2, current: 3)) {
                    try await checkpoints.commit(
                        "s", expected: b, new: LogPosition(transaction: 14, position: 1), token: 2)
                }
                try await checkpoints.commit("s", expected: b, new: LogPosition(transaction: 14, position: 1), token: 3)
                #expect(try await checkpoints.checkpoints().map(\.subscription) == ["s"])
                try await checkpoints.delete("s")
                #expect(try await checkpoints.checkpoint("s") == nil)
            }
        }

        @Test("parked events are stored, listed, replaced and removed")
        func parked() async throws {
            try await withFreshStore { store in
                _ = try await store.append([event("A"), event("B")], to: "p-1", expected: .any, commandID: nil)
                let events = try await store.readAll(after: .start, limit: 10, filter: .all)
                let parkedStore = PostgresParkedEventStore(store: store)
                try await parkedStore.park(ParkedEvent(subscription: "x", event: events[1], error: "boom", attempts: 3))
                try await parkedStore.park(ParkedEvent(subscription: "x", event: events[0], error: "bang", attempts: 1))
                try await parkedStore.park(ParkedEvent(subscription: "y", event: events[0], error: "bang", attempts: 1))
                try await parkedStore.park(
                    ParkedEvent(subscription: "x", event: events[1], error: "boom again", attempts: 4))
                let x = try await parkedStore.parkedEvents(subscription: "x", limit: 10)
                #expect(x.map(\.event.id) == [events[0].id, events[1].id])
                #expect(x.last?.error == "boom again")
                #expect(x.last?.attempts == 4)
                #expect(x.last?.event == events[1])
                #expect(try await parkedStore.parkedEvents(subscription: nil, limit: 10).count == 3)
                #expect(try await parkedStore.parkedEvent(subscription: "y", position: events[0].logPosition) != nil)
                #expect(
                    try await parkedStore.remove(subscription: "y", position: events[0].logPosition)?.error == "bang")
                #expect(try await parkedStore.remove(subscription: "y", position: events[0].logPosition) == nil)
                #expect(try await parkedStore.parkedEvents(subscription: nil, limit: 10).count == 2)
            }
        }

        @Test("one leader per subscription; when its connection dies another takes over with a newer token")
        func leadership() async throws {
            try await withFreshStore { store in
                var settings = PostgresLeadership.Configuration()
                settings.retryInterval = .milliseconds(100)
                settings.heartbeatInterval = .milliseconds(200)
                try await withPeer(of: store) { peerA in
                    try await withPeer(of: store) { peerB in
                        let a = PostgresLeadership(store: peerA, configuration: settings)
                        let b = PostgresLeadership(store: peerB, configuration: settings)
                        let runA = Task { try await a.run() }
                        let runB = Task { try await b.run() }
                        let tokenA = try await a.acquire("sub")
                        let waiting = Task { try await b.acquire("sub") }
                        try await Task.sleep(for: .milliseconds(500))  // b keeps trying meanwhile
                        #expect(await a.isLeader("sub", token: tokenA))
                        #expect(try await leaseToken(store, "sub") == tokenA)

                        let pid = try #require(try await leaseHolderPID(store, "sub"))
                        _ = try await store.client.query("SELECT pg_terminate_backend(\(pid))")
                        let tokenB = try await waiting.value
                        #expect(tokenB > tokenA)
                        #expect(try await eventually { await !a.isLeader("sub", token: tokenA) })
                        #expect(await b.isLeader("sub", token: tokenB))
                        // The old leader cannot move the checkpoint.
                        let checkpoints = PostgresCheckpointStore(store: peerA)
                        await #expect(throws: CheckpointError.self) {
                            try await checkpoints.commit(
                                "sub", expected: nil, new: LogPosition(transaction: 1, position: 1), token: tokenA)
                        }
                        await b.release("sub", token: tokenB)
                        #expect(try await leaseHolderPID(store, "sub") == nil)
                        runA.cancel()
                        runB.cancel()
                        _ = await (runA.result, runB.result)
                    }
                }
            }
        }

        @Test("a projection applies batches with its checkpoint, parks a poison event, and rebuilds into a new version")
        func projectionAndRebuild() async throws {
            try await withFreshStore { store in
                for i in 0..<120 {
                    _ = try await store.append(
                        [event("Counted", #"{"i":\#(i)}"#)], to: "c-\(i % 7)", expected: .any, commandID: nil)
                }
                let last = try await store.append([event("Poison")], to: "c-poison", expected: .any, commandID: nil)
                    .lastLogPosition
                var options = ProjectionOptions(batchSize: 25)
                options.pollInterval = .milliseconds(100)
                options.failurePolicy = FailurePolicy(
                    maxRetries: 1, initialBackoff: .milliseconds(10), finalAction: .park)
                let projection = try PostgresProjection(CountsModel(), store: store, options: options)
                let service = try PipelineService(
                    store: store, projections: [projection], leadership: PostgresLeadership(store: store))
                let running = Task { try await service.run() }
                defer { running.cancel() }
                try await service.waitUntilProcessed(last, timeout: .seconds(30))
                #expect(try await readCounts(store) == (try await rebuildCounts(store)))
                let parked = try await PostgresParkedEventStore(store: store).parkedEvents(subscription: nil, limit: 10)
                #expect(parked.map(\.event.type) == ["Poison"])
                let checkpoint = try await projection.checkpoints.checkpoint("counts@v1")
                #expect(checkpoint?.position == last)

                let version = try await service.rebuild(projection: "counts")
                #expect(version == 2)
                #expect(try await projection.activeTables()?.version == 2)
                #expect(try await readCounts(store) == (try await rebuildCounts(store)))
                let added = try await store.append([event("Counted")], to: "c-new", expected: .any, commandID: nil)
                try await service.waitUntilProcessed(added.lastLogPosition, timeout: .seconds(30))
                #expect(try await readCounts(store)["c-new"] == [1, 1])
                #expect(try await projection.checkpoints.checkpoint("counts@v1") == nil)
                service.stop()
                try await running.value
            }
        }
    }
}

/// Positions applied (not unique: a double application shows); fails on `Poison` while `broken`.
struct ReplayLogModel: PostgresReadModel {
    let name = "replays"
    let tables = ["replayed"]
    let logger = Logger(label: "replays")
    let broken: Locked<Bool>

    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        _ = try await connection.query(
            "CREATE TABLE \(unescaped: try tables.table("replayed")) (position bigint NOT NULL)", logger: logger)
    }

    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws
    {
        if event.type == "Poison", broken.value.withLock({ $0 }) { throw PoisonError() }
        _ = try await connection.query(
            "INSERT INTO \(unescaped: try tables.table("replayed")) (position) VALUES (\(event.position))",
            logger: logger)
    }
}

/// A read model that declares the `counts` table of ``CountsModel`` under another name.
struct OtherCountsModel: PostgresReadModel {
    let name = "other"
    let tables = ["counts"]
    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {}
    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws
    {}
}

/// The server processes holding `subscription`'s lease: the advisory lock holder, else the
/// connections named `backstage-lease...` (of this schema when the name says so).
func leaseBackends(_ store: PostgresEventStore, _ subscription: String) async throws -> [Int32] {
    if let pid = try await leaseHolderPID(store, subscription) { return [pid] }
    var pids: [Int32] = []
    for pattern in ["backstage-lease%\(store.schema.rawValue)%", "backstage-lease%"] {
        let rows = try await store.client.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE \(pattern) AND pid <> pg_backend_pid()")
        for try await pid in rows.decode(Int32.self) { pids.append(pid) }
        if !pids.isEmpty { return pids }
    }
    return pids
}

extension PostgresTests {
    @Suite("Pipelines recover: lost lease connections, concurrent replays, table ownership")
    struct PipelineRecovery {
        @Test(
            "a projection whose lease connection is terminated becomes a candidate again and resumes from its checkpoint",
            .timeLimit(.minutes(2)))
        func leaseConnectionTerminated() async throws {
            try await withFreshStore { store in
                var settings = PostgresLeadership.Configuration()
                settings.retryInterval = .milliseconds(100)
                settings.heartbeatInterval = .milliseconds(200)
                var options = ProjectionOptions(batchSize: 25)
                options.pollInterval = .milliseconds(100)
                let projection = try PostgresProjection(CountsModel(), store: store, options: options)
                let service = try PipelineService(
                    store: store, projections: [projection],
                    leadership: PostgresLeadership(store: store, configuration: settings))
                let running = Task { try await service.run() }
                defer { running.cancel() }
                var last = LogPosition.start
                for i in 0..<40 {
                    last = try await store.append([event("Counted")], to: "k-\(i % 5)", expected: .any, commandID: nil)
                        .lastLogPosition
                }
                try await service.waitUntilProcessed(last, timeout: .seconds(30))
                let firstToken = try #require(try await leaseToken(store, "counts@v1"))
                let pids = try await leaseBackends(store, "counts@v1")
                #expect(!pids.isEmpty, "no lease connection found")
                for pid in pids { _ = try await store.client.query("SELECT pg_terminate_backend(\(pid))") }
                // Events after the loss: the projection must take its lease again and apply them.
                for i in 40..<80 {
                    last = try await store.append([event("Counted")], to: "k-\(i % 5)", expected: .any, commandID: nil)
                        .lastLogPosition
                    if i % 10 == 0 { try await Task.sleep(for: .milliseconds(100)) }
                }
                try await service.waitUntilProcessed(last, timeout: .seconds(30))
                #expect(try await leaseToken(store, "counts@v1") ?? 0 > firstToken)
                #expect(try await readCounts(store) == (try await rebuildCounts(store)))
                service.stop()
                try await running.value
            }
        }

        @Test("eight concurrent replays of a parked PostgreSQL projection event apply it once; nothing stays parked")
        func concurrentReplays() async throws {
            try await withFreshStore { store in
                _ = try await store.append(
                    [event("Counted"), event("Counted")], to: "r-1", expected: .any, commandID: nil)
                let poison = try await store.append([event("Poison")], to: "r-2", expected: .any, commandID: nil)
                    .lastLogPosition
                let last = try await store.append([event("Counted")], to: "r-1", expected: .any, commandID: nil)
                    .lastLogPosition
                let broken = Locked(true)
                var options = ProjectionOptions(batchSize: 10)
                options.pollInterval = .milliseconds(100)
                options.failurePolicy = FailurePolicy(maxRetries: 0, finalAction: .park)
                let projection = try PostgresProjection(ReplayLogModel(broken: broken), store: store, options: options)
                let service = try PipelineService(
                    store: store, projections: [projection], leadership: PostgresLeadership(store: store))
                let running = Task { try await service.run() }
                defer { running.cancel() }
                try await service.waitUntilProcessed(last, timeout: .seconds(30))
                #expect(try await service.parkedEvents().map(\.event.logPosition) == [poison])
                broken.value.withLock { $0 = false }
                let errors = await withTaskGroup(of: (any Error)?.self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            do {
                                try await service.replayParked(subscription: "replays@v1", position: poison)
                                return nil
                            } catch { return error }
                        }
                    }
                    var all: [(any Error)?] = []
                    for await e in group { all.append(e) }
                    return all
                }
                let rows = try await store.client.query(
                    "SELECT count(*) FROM \(unescaped: store.schema.rawValue).replayed WHERE position = \(poison.position)"
                )
                var applied: Int64 = -1
                for try await n in rows.decode(Int64.self) { applied = n }
                #expect(applied == 1, "the parked event was applied \(applied) times")
                #expect(try await service.parkedEvents().isEmpty, "the replayed event is parked again")
                let failures = errors.compactMap { $0 }
                #expect(failures.count == 7)
                #expect(
                    failures.allSatisfy {
                        if case .parkedEventNotFound = $0 as? PipelineError { return true }
                        return false
                    }, "\(failures)")
                service.stop()
                try await running.value
            }
        }

        @Test("parked records change only by compare-and-set on their attempts")
        func parkedCompareAndSet() async throws {
            try await withFreshStore { store in
                _ = try await store.append([event("A")], to: "p-1", expected: .any, commandID: nil)
                let e = try #require(try await store.readAll(after: .start, limit: 1, filter: .all).first)
                let parked = PostgresParkedEventStore(store: store)
                try await parked.park(ParkedEvent(subscription: "x", event: e, error: "boom", attempts: 1))
                var claim = ParkedEvent(subscription: "x", event: e, error: "claimed", attempts: 2)
                #expect(try await parked.update(claim, expectedAttempts: 1))
                #expect(!(try await parked.update(claim, expectedAttempts: 1)))
                #expect(try await parked.parkedEvent(subscription: "x", position: e.logPosition)?.error == "claimed")
                try await parked.remove(subscription: "x", position: e.logPosition)
                claim.attempts = 3
                #expect(!(try await parked.update(claim, expectedAttempts: 2)), "a removed record came back")
                #expect(try await parked.parkedEvent(subscription: "x", position: e.logPosition) == nil)
            }
        }

        @Test("two read models declaring the same table fail at start, naming both, in one process or two")
        func sameTableTwice() async throws {
            try await withFreshStore { store in
                let counts = try PostgresProjection(CountsModel(), store: store)
                #expect(try await counts.activeVersion() == 1)
                let other = try PostgresProjection(OtherCountsModel(), store: store)
                await #expect(
                    throws: ProjectionError.tableOwned("counts", owner: "counts", projection: "other")
                ) {
                    _ = try await other.activeVersion()
                }
                // Another process (its own pool) gets the same answer; the owner itself is fine.
                try await withPeer(of: store) { peer async throws in
                    await #expect(
                        throws: ProjectionError.tableOwned("counts", owner: "counts", projection: "other")
                    ) {
                        _ = try await PostgresProjection(OtherCountsModel(), store: peer).activeVersion()
                    }
                    #expect(try await PostgresProjection(CountsModel(), store: peer).activeVersion() == 1)
                }
            }
        }
    }
}
