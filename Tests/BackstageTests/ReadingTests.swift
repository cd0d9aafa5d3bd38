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
        arguments: [DeafStore.Hints.silent, .finished])
    func followerPolls(_ hints: DeafStore.Hints) async throws {
        let store = DeafStore(hints: hints)
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

/// An in-memory store whose append notifications never come: a stream that stays silent, or one
/// that ends at once.
struct DeafStore: EventStore {
    enum Hints: Sendable, CustomStringConvertible {
        case silent, finished
        var description: String { self == .silent ? "silent" : "finished" }
    }
    let inner = InMemoryEventStore()
    let hints: Hints

    var limits: StoreLimits { inner.limits }
    func append(_ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?)
        async throws -> AppendResult
    {
        try await inner.append(events, to: stream, expected: expected, commandID: commandID)
    }
    func readStream(_ stream: String, from version: Int64, direction: ReadDirection, limit: Int) async throws
        -> [RecordedEvent]
    {
        try await inner.readStream(stream, from: version, direction: direction, limit: limit)
    }
    func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws -> [RecordedEvent] {
        try await inner.readAll(after: position, limit: limit, filter: filter)
    }
    func streamVersion(_ stream: String) async throws -> Int64 { try await inner.streamVersion(stream) }
    func headPosition() async throws -> LogPosition { try await inner.headPosition() }
    func appendResult(forCommand commandID: UUID) async throws -> AppendResult? {
        try await inner.appendResult(forCommand: commandID)
    }
    func saveSnapshot(_ snapshot: Snapshot) async throws { try await inner.saveSnapshot(snapshot) }
    func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        try await inner.loadSnapshot(stream, schemaVersion: schemaVersion)
    }
    func appendNotifications() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        if hints == .finished { continuation.finish() }
        return stream
    }
}
