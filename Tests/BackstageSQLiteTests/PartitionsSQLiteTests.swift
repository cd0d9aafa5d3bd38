import Backstage
import BackstageSQLite
import Foundation
import Testing

@Suite("SQLite: partitioned subscriptions are refused")
struct PartitionsSQLiteTests {
    struct Noop: EventHandler {
        let name = "split"
        var options: HandlerOptions { HandlerOptions(partitions: 4) }
        func handle(_ event: RecordedEvent) async throws {}
    }

    @Test("a handler or projection with partitions > 1 over a SQLite store is refused when the service is created")
    func refused() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        #expect(
            throws: PipelineError.partitionsUnsupported(
                "split", reason: "the store does not select partitions (SQLite runs a subscription in one process)")
        ) {
            try PipelineService(store: store, handlers: [Noop()])
        }
        var options = ProjectionOptions()
        options.partitions = 2
        let projection = InMemoryProjection(name: "p", options: options, initial: 0) { n, _ in n += 1 }
        #expect(throws: PipelineError.self) { try PipelineService(store: store, projections: [projection]) }
        // One partition is today's single subscription.
        options.partitions = 1
        let single = InMemoryProjection(name: "p", options: options, initial: 0) { n, _ in n += 1 }
        _ = try PipelineService(store: store, projections: [single])
        try await store.close()
    }
}
