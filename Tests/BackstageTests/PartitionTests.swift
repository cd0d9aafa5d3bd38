import Backstage
import BackstageTestSupport
import Foundation
import Synchronization
import Testing

@Suite("Partitioned subscriptions (in memory: every partition in the one process)")
struct PartitionTests {
    @Test(
        "a handler with 4 partitions: each event once, in stream order, by the partition of its stream; checkpoints per partition; parked events per partition"
    )
    func partitionedHandler() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 300, streams: 7)
        let seen = PipeBox([String: [Int64]]())
        var options = HandlerOptions(batchSize: 5, partitions: 4)
        options.failurePolicy = FailurePolicy(
            maxRetries: 1, initialBackoff: .milliseconds(1), maxBackoff: .milliseconds(1), finalAction: .park)
        let handler = ClosureHandler(name: "split", options: options) { batch in
            for e in batch where e.position == 77 { throw PipeFailure(position: e.position) }
            seen.with { for e in batch { $0[e.stream, default: []].append(e.streamVersion) } }
        }
        let service = try PipelineService(store: store, handlers: [handler])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 300))
        let ids = (0..<4).map { partitionSubscription("split", partition: $0, of: 4) }
        #expect(ids == ["split#0/4", "split#1/4", "split#2/4", "split#3/4"])
        #expect(Set(service.status().map(\.subscription)) == Set(ids))
        let statuses = try await service.partitionStatus()
        #expect(statuses.map(\.subscription) == ids)
        #expect(statuses.allSatisfy { $0.local && $0.checkpoint == LogPosition(position: 300) })
        // Every event once, each stream in order (event 77 parked under its partition's id).
        for (stream, versions) in seen.value {
            #expect(versions == versions.sorted(), "\(stream) out of order")
            #expect(Set(versions).count == versions.count, "\(stream) handled twice")
        }
        #expect(seen.value.values.map(\.count).reduce(0, +) == 299)
        let parked = try await service.parkedEvents()
        #expect(parked.map(\.event.position) == [77])
        let parkedID = try #require(parked.first?.subscription)
        #expect(parsePartitionSubscription(parkedID)?.base == "split")
        let stream = parked[0].event.stream
        #expect(
            EventPartition(key: .stream, index: parsePartitionSubscription(parkedID)!.partition, count: 4)
                .contains(stream: stream))
        await #expect(throws: PipeFailure.self) {
            try await service.replayParked(subscription: parkedID, position: LogPosition(position: 77))
        }
        try await service.discardParked(subscription: parkedID, position: LogPosition(position: 77))
        try await running.stop()
    }

    @Test("a projection with 3 partitions applies every event once; strong consistency waits for the lowest partition")
    func partitionedProjection() async throws {
        let store = InMemoryEventStore()
        var options = ProjectionOptions(batchSize: 10, partitions: 3)
        options.partitionKey = .category
        let projection = InMemoryProjection(name: "per-category", options: options, initial: [String: Int]()) {
            counts, event in counts[event.stream, default: 0] += 1
        }
        let service = try PipelineService(store: store, projections: [projection])
        let running = RunningService(service)
        for prefix in ["alpha", "beta", "gamma", "delta"] {
            try await appendTicks(store, count: 50, streams: 3, prefix: prefix)
        }
        try await service.waitUntilProcessed(LogPosition(position: 200))
        #expect(projection.state.values.reduce(0, +) == 200)
        let committed = try await committedPosition(
            of: projectionSubscription("per-category", version: 1), partitions: 3, in: projection.checkpoints)
        #expect(committed == LogPosition(position: 200))
        try await service.consistency.wait(
            for: .projections(["per-category"]), position: LogPosition(position: 200), timeout: .seconds(10))
        // A rebuild fills version 2 and the partitions go on from where it stopped.
        let version = try await service.rebuild(projection: "per-category")
        #expect(version == 2)
        try await appendTicks(store, count: 10, streams: 2, prefix: "epsilon")
        try await service.waitUntilProcessed(LogPosition(position: 210))
        #expect(projection.state.values.reduce(0, +) == 210)
        try await running.stop()
    }

    @Test("a custom partition key cannot be partitioned (no store can select it)")
    func customKeyRefused() throws {
        var options = HandlerOptions(partitions: 2)
        options.partitionKey = .custom { $0.stream }
        let handler = ClosureHandler(name: "custom", options: options) { _ in }
        #expect(throws: PipelineError.self) { try PipelineService(store: InMemoryEventStore(), handlers: [handler]) }
    }
}
