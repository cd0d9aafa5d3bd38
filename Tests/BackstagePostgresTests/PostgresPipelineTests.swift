import Backstage
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

    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
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
    for try await (stream, events, last) in rows.decode((String, Int64, Int64).self) { counts[stream] = [events, last] }
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
                    try await checkpoints.commit("s", expected: b, new: LogPosition(transaction: 13, position: 9), token: 1)
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
                    try await checkpoints.commit("s", expected: b, new: LogPosition(transaction: 14, position: 1), token: 2)
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
                try await parkedStore.park(ParkedEvent(subscription: "x", event: events[1], error: "boom again", attempts: 4))
                let x = try await parkedStore.parkedEvents(subscription: "x", limit: 10)
                #expect(x.map(\.event.id) == [events[0].id, events[1].id])
                #expect(x.last?.error == "boom again")
                #expect(x.last?.attempts == 4)
                #expect(x.last?.event == events[1])
                #expect(try await parkedStore.parkedEvents(subscription: nil, limit: 10).count == 3)
                #expect(try await parkedStore.parkedEvent(subscription: "y", position: events[0].logPosition) != nil)
                #expect(try await parkedStore.remove(subscription: "y", position: events[0].logPosition)?.error == "bang")
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
                let peerA = try await openPeer(of: store)
                let peerB = try await openPeer(of: store)
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
                    try await checkpoints.commit("sub", expected: nil, new: LogPosition(transaction: 1, position: 1), token: tokenA)
                }
                await b.release("sub", token: tokenB)
                #expect(try await leaseHolderPID(store, "sub") == nil)
                runA.cancel()
                runB.cancel()
                _ = await (runA.result, runB.result)
                await peerA.close()
                await peerB.close()
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
                options.failurePolicy = FailurePolicy(maxRetries: 1, initialBackoff: .milliseconds(10), finalAction: .park)
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
