import Backstage
import BackstageTestSupport
import Foundation
import Synchronization
import Testing

@Suite("Pipelines: store-provided defaults, consistency from committed checkpoints")
struct DurableDefaultsTests {
    @Test("a new pipeline service over the same in-memory store resumes where the last one stopped")
    func inMemoryStoreKeepsCheckpoints() async throws {
        let store = InMemoryEventStore()
        let handled = Mutex<[Int64]>([])
        var options = HandlerOptions()
        options.pollInterval = .milliseconds(20)
        let handler = ClosureHandler(name: "receipts", options: options) { batch in
            handled.withLock { $0 += batch.map(\.position) }
        }
        _ = try await appendTicks(store, count: 10, streams: 2)
        let first = RunningService(try PipelineService(store: store, handlers: [handler]))
        try await first.service.waitUntilProcessed()
        try await first.stop()
        _ = try await appendTicks(store, count: 5, streams: 2, prefix: "late")
        let second = RunningService(try PipelineService(store: store, handlers: [handler]))
        try await second.service.waitUntilProcessed()
        try await second.stop()
        #expect(handled.withLock { $0 }.sorted() == Array(1...15))
    }

    @Test(
        "a .strong dispatch waits for a projection run by another service (another registry) through its committed checkpoint"
    )
    func strongFromCommittedCheckpoint() async throws {
        let store = InMemoryEventStore()
        let app = try tallyApp(store)
        let totals = InMemoryProjection(
            name: "totals", options: ProjectionOptions(batchSize: 1_000, batchTimeout: .milliseconds(100)),
            initial: [String: Int]()
        ) { totals, event in
            if let bumped = try event.decode(as: TallyBumped.self) { totals[event.stream, default: 0] += bumped.by }
        }
        // The app only knows the projection; another service (with its own registry) runs it.
        app.consistency.register(totals)
        let elsewhere = RunningService(try PipelineService(store: store, projections: [totals]))
        for i in 1...5 {
            try await app.dispatch(Bump(id: "a", by: i), options: DispatchOptions(consistency: .strong))
            #expect(totals.state["tally-a"] == (1...i).reduce(0, +))
        }
        try await elsewhere.stop()
        await #expect(throws: ConsistencyError.self) {
            try await app.dispatch(
                Bump(id: "a", by: 1), options: DispatchOptions(consistency: .strong, timeout: .milliseconds(300)))
        }
    }
}
