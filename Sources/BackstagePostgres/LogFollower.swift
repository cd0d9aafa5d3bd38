import Backstage
import Foundation

/// A minimal subscriber of the global log, used by the PostgreSQL tests and their worker
/// processes: reads pages after its position, and when it reaches the head waits for a
/// notification hint or the polling interval, whichever comes first.
package struct LogFollower: Sendable {
    package let store: any EventStore
    package var filter: EventFilter
    package var pageSize: Int
    package var pollInterval: Duration
    package var useNotifications: Bool

    package init(
        store: any EventStore, filter: EventFilter = .all, pageSize: Int = 500,
        pollInterval: Duration = .seconds(1), useNotifications: Bool = true
    ) {
        self.store = store
        self.filter = filter
        self.pageSize = pageSize
        self.pollInterval = pollInterval
        self.useNotifications = useNotifications
    }

    /// Every event after `position`, in log order, forever (until the consumer stops iterating).
    package func events(after position: LogPosition) -> AsyncThrowingStream<RecordedEvent, any Error> {
        let (wakeups, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let (output, continuation) = AsyncThrowingStream<RecordedEvent, any Error>.makeStream(
            bufferingPolicy: .bufferingOldest(pageSize * 2))
        let hints: Task<Void, Never>? =
            useNotifications
            ? Task { [store] in
                for await _ in store.appendNotifications() { wake.yield() }
            } : nil
        let ticker = Task { [pollInterval] in
            while !Task.isCancelled {
                try? await Task.sleep(for: pollInterval)
                wake.yield()
            }
        }
        let reader = Task { [self] in
            var position = position
            var iterator = wakeups.makeAsyncIterator()
            do {
                while !Task.isCancelled {
                    let page = try await store.readAll(after: position, limit: pageSize, filter: filter)
                    for event in page {
                        // Back-pressure: wait while the consumer is a full buffer behind.
                        while case .dropped = continuation.yield(event) {
                            try await Task.sleep(for: .milliseconds(5))
                        }
                        position = event.logPosition
                    }
                    if page.count < pageSize {
                        if await iterator.next() == nil { break }
                    }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in
            reader.cancel()
            ticker.cancel()
            hints?.cancel()
            wake.finish()
        }
        return output
    }
}
