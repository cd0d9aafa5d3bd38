import Backstage
import BackstageTesting
import Foundation
import Synchronization
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

    @Test(
        "without notifications a follower finds new events by polling",
        arguments: [RecordingEventStore.Notifications.silent, .finished])
    func followerPolls(_ hints: RecordingEventStore.Notifications) async throws {
        let store = RecordingEventStore(notifications: hints)
        let seen = Mutex<[Int64]>([])
        let follower = Task {
            for try await event in store.events(mode: .follow(pollInterval: .milliseconds(50))) {
                seen.withLock { $0.append(event.streamVersion) }
            }
        }
        defer { follower.cancel() }
        for round in 1...3 {
            _ = try await store.append(
                [EventData(type: "Polled", data: Data("{}".utf8))], to: "deaf-1", expected: .any, commandID: nil)
            let deadline = ContinuousClock.now + .seconds(20)
            while seen.withLock({ $0.count }) < round, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(seen.withLock { $0 } == Array(1...Int64(round)))
            // Let the follower time out at the head at least once before the next append.
            try await Task.sleep(for: .milliseconds(120))
        }
    }
}
