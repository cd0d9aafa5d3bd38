import Foundation
import Synchronization

/// An event a subscription gave up on after its retries: kept with the error so it can be
/// inspected, replayed or discarded.
public struct ParkedEvent: Sendable, Hashable {
    /// The subscription that failed to handle the event.
    public var subscription: String
    /// The event.
    public var event: RecordedEvent
    /// The last error, as text.
    public var error: String
    /// How many times handling was attempted.
    public var attempts: Int
    /// When the event was parked.
    public var parkedAt: Date

    /// Creates a parked event.
    public init(subscription: String, event: RecordedEvent, error: String, attempts: Int, parkedAt: Date = Date()) {
        self.subscription = subscription
        self.event = event
        self.error = error
        self.attempts = attempts
        self.parkedAt = parkedAt
    }
}

/// The dead-letter table of the pipelines. Parking the same event of the same subscription twice
/// replaces the first record (so a crash between parking and committing does not duplicate it).
public protocol ParkedEventStore: Sendable {
    /// Stores (or replaces) a parked event.
    func park(_ parked: ParkedEvent) async throws
    /// Parked events, oldest position first; all subscriptions when `subscription` is nil.
    func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent]
    /// The parked event of `subscription` at `position`, if any.
    func parkedEvent(subscription: String, position: LogPosition) async throws -> ParkedEvent?
    /// Removes a parked event; returns it, or nil when there was none.
    @discardableResult
    func remove(subscription: String, position: LogPosition) async throws -> ParkedEvent?
    /// Compare-and-set: replaces the parked record of `parked`'s subscription and position with
    /// `parked` only when it still exists with `expectedAttempts` attempts; true when it did.
    /// Replays claim a record with it, and record a failed attempt only if nobody replayed or
    /// discarded the event meanwhile, so a replay or discard happens exactly once.
    func update(_ parked: ParkedEvent, expectedAttempts: Int) async throws -> Bool
}

/// Parked events in memory: for tests and the in-memory store.
package final class InMemoryParkedEventStore: ParkedEventStore {
    private struct Key: Hashable {
        var subscription: String
        var position: LogPosition
    }
    private let state = Mutex<[Key: ParkedEvent]>([:])

    /// Creates an empty store.
    package init() {}

    package func park(_ parked: ParkedEvent) async throws {
        state.withLock { $0[Key(subscription: parked.subscription, position: parked.event.logPosition)] = parked }
    }

    package func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent] {
        state.withLock { s in
            s.values.filter { subscription == nil || $0.subscription == subscription }
                .sorted { ($0.event.logPosition, $0.subscription) < ($1.event.logPosition, $1.subscription) }
                .prefix(max(limit, 0)).map { $0 }
        }
    }

    package func parkedEvent(subscription: String, position: LogPosition) async throws -> ParkedEvent? {
        state.withLock { $0[Key(subscription: subscription, position: position)] }
    }

    package func remove(subscription: String, position: LogPosition) async throws -> ParkedEvent? {
        state.withLock { $0.removeValue(forKey: Key(subscription: subscription, position: position)) }
    }

    package func update(_ parked: ParkedEvent, expectedAttempts: Int) async throws -> Bool {
        state.withLock { s in
            let key = Key(subscription: parked.subscription, position: parked.event.logPosition)
            guard s[key]?.attempts == expectedAttempts else { return false }
            s[key] = parked
            return true
        }
    }
}
