import Backstage
import BackstageTesting
import Testing

@Suite("Streaming reads on the in-memory store")
struct InMemoryReadingTests {
    @Test(arguments: ReadingConformance.checks)
    func reading(_ check: ConformanceCheck) async throws {
        try await check.run { InMemoryEventStore() }
    }

    @Test("a follower ends on cancellation while it waits at the head")
    func followerEndsWhileWaiting() async throws {
        let store = InMemoryEventStore()
        let follower = Task {
            var count = 0
            for try await _ in store.events(mode: .follow(pollInterval: .seconds(3600))) { count += 1 }
            return count
        }
        try await Task.sleep(for: .milliseconds(50))
        follower.cancel()
        await #expect(throws: CancellationError.self) { try await follower.value }
    }
}
