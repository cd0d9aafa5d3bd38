import Foundation

// MARK: Values

/// One stream as the inspection API lists it.
public struct StreamInfo: Sendable, Hashable, Codable {
    /// The stream id.
    public var stream: String
    /// The stream's category (see `streamCategory(_:)`).
    public var category: String
    /// The stream's version: the number of events in it.
    public var version: Int64
    /// The global position of the stream's last event.
    public var lastPosition: Int64
    /// When the stream's last event was stored.
    public var lastWrittenAt: Date

    /// Creates a stream summary (stores use this).
    package init(stream: String, version: Int64, lastPosition: Int64, lastWrittenAt: Date) {
        self.stream = stream
        self.category = streamCategory(stream)
        self.version = version
        self.lastPosition = lastPosition
        self.lastWrittenAt = lastWrittenAt
    }
}

/// One page of streams, in the store's order of stream ids.
public struct StreamPage: Sendable, Hashable, Codable {
    /// The streams of this page.
    public var streams: [StreamInfo]
    /// Pass it as `after` to read the next page; nil on the last page.
    public var next: String?

    /// Creates a page.
    package init(streams: [StreamInfo], next: String?) {
        self.streams = streams
        self.next = next
    }
}

/// Who holds a subscription's lease, as the store's database records it.
public struct LeaseInfo: Sendable, Hashable, Codable {
    /// The process that took the lease last (host:pid by default).
    public var owner: String
    /// The lease's fencing token: it grows with every takeover.
    public var token: Int64
    /// When the lease was taken.
    public var acquiredAt: Date
    /// When the lease runs out unless renewed (leases with an expiry only: SQLite).
    public var expiresAt: Date?
    /// Whether the lease is held now: unexpired (SQLite), or its advisory lock held by a live
    /// session (PostgreSQL).
    public var held: Bool

    /// Creates a lease summary (stores use this).
    package init(owner: String, token: Int64, acquiredAt: Date, expiresAt: Date?, held: Bool) {
        self.owner = owner
        self.token = token
        self.acquiredAt = acquiredAt
        self.expiresAt = expiresAt
        self.held = held
    }
}

/// A subscription (handler, projection version or partition) as its stored checkpoint, lease and
/// parked events show it.
public struct SubscriptionInfo: Sendable, Hashable, Codable {
    /// Whether the subscription runs somewhere, as far as the database can tell.
    public enum Activity: String, Sendable, Hashable, Codable {
        /// A process holds its lease.
        case running
        /// Nobody holds its lease: stopped, never started here, or its process died.
        case stopped
        /// The store cannot tell (in-memory leadership).
        case unknown
    }

    /// The subscription id (a handler's name, or `projection@vN`).
    public var subscription: String
    /// The committed checkpoint (nil: none yet).
    public var checkpoint: LogPosition?
    /// When the checkpoint was last committed.
    public var checkpointUpdatedAt: Date?
    /// Events of the log after the checkpoint: only those the subscription's filter matches when
    /// the filter was given to ``StoreInspector/subscriptions(filters:)``, all of them otherwise
    /// (an upper bound).
    public var lagEvents: Int64
    /// How long the oldest event after the checkpoint has been waiting, in seconds (0 when none).
    public var lagSeconds: Double
    /// Whether the lag counts only matching events (the filter was known).
    public var filtered: Bool
    /// The lease, if the subscription ever ran with lease leadership.
    public var lease: LeaseInfo?
    /// Running or stopped, as far as the database can tell.
    public var activity: Activity
    /// Parked events of the subscription (in the store's parked-event table).
    public var parked: Int

    /// Creates a subscription summary (stores use this).
    package init(
        subscription: String, checkpoint: LogPosition?, checkpointUpdatedAt: Date?, lagEvents: Int64,
        lagSeconds: Double, filtered: Bool, lease: LeaseInfo?, activity: Activity, parked: Int
    ) {
        self.subscription = subscription
        self.checkpoint = checkpoint
        self.checkpointUpdatedAt = checkpointUpdatedAt
        self.lagEvents = lagEvents
        self.lagSeconds = lagSeconds
        self.filtered = filtered
        self.lease = lease
        self.activity = activity
        self.parked = parked
    }
}

/// Event counts of a store (or of one category).
public struct EventStatistics: Sendable, Hashable, Codable {
    /// Events of one type.
    public struct TypeCount: Sendable, Hashable, Codable {
        /// The type name.
        public var type: String
        /// How many events of the type.
        public var count: Int64
        /// When the first one was stored.
        public var first: Date
        /// When the last one was stored.
        public var last: Date

        /// Creates a count.
        package init(type: String, count: Int64, first: Date, last: Date) {
            self.type = type
            self.count = count
            self.first = first
            self.last = last
        }
    }

    /// Events stored on one day (UTC).
    public struct DayCount: Sendable, Hashable, Codable {
        /// The day, `YYYY-MM-DD` (UTC).
        public var day: String
        /// How many events were stored that day.
        public var count: Int64

        /// Creates a count.
        package init(day: String, count: Int64) {
            self.day = day
            self.count = count
        }
    }

    /// Every event counted.
    public var events: Int64
    /// Streams with at least one counted event.
    public var streams: Int64
    /// Counts by type, most frequent first.
    public var byType: [TypeCount]
    /// Counts by day, oldest first.
    public var byDay: [DayCount]

    /// Creates statistics (stores use this).
    package init(events: Int64, streams: Int64, byType: [TypeCount], byDay: [DayCount]) {
        self.events = events
        self.streams = streams
        self.byType = byType.sorted { ($1.count, $0.type) < ($0.count, $1.type) }
        self.byDay = byDay.sorted { $0.day < $1.day }
    }
}

// MARK: The protocol

/// Read-only questions an operator asks a store: its streams, subscriptions, parked events and
/// statistics. The `backstage` command-line tool and the web console both use it.
///
/// Get one with ``EventStore/inspector``: the SQLite and PostgreSQL stores answer in their own
/// SQL (efficient on large logs); any other store is answered by scanning its log (fine for the
/// in-memory store and tests). Reading events goes through the store itself
/// (``EventStore/readStream(_:from:direction:limit:)``, ``EventStore/readAll(after:limit:filter:)``);
/// replaying and discarding parked events through ``PipelineService`` or the
/// ``ParkedEventStore`` of ``EventStore/pipelineDefaults``.
public protocol StoreInspector: Sendable {
    /// The store inspected.
    var store: any EventStore { get }

    /// Streams in the store's order of stream ids, after `after` (exclusive; nil: from the first),
    /// at most `limit`, only those of `category` when given.
    func streams(category: String?, after: String?, limit: Int) async throws -> StreamPage

    /// One stream's summary, or nil when it has no event.
    func stream(_ stream: String) async throws -> StreamInfo?

    /// Every subscription with a stored checkpoint or lease: checkpoint, lag, lease, activity and
    /// parked count. `filters` gives the filter of the subscriptions the caller knows (by
    /// subscription id), so their lag counts only the events they read.
    func subscriptions(filters: [String: EventFilter]) async throws -> [SubscriptionInfo]

    /// Parked events of `subscription` (all when nil), oldest first.
    func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent]

    /// Event counts by type and by day (UTC), of the whole log or of one category.
    func statistics(category: String?) async throws -> EventStatistics
}

extension StoreInspector {
    /// Parked events from the store's default parked-event table (``EventStore/pipelineDefaults``).
    public func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent] {
        try await store.pipelineDefaults.parkedEvents.parkedEvents(subscription: subscription, limit: limit)
    }

    /// Every subscription, lag counted over every event.
    public func subscriptions() async throws -> [SubscriptionInfo] { try await subscriptions(filters: [:]) }
}

/// A store that answers inspection in its own query language (the SQLite and PostgreSQL stores).
public protocol InspectableEventStore: EventStore {
    /// An inspector over this store.
    func makeInspector() -> any StoreInspector
}

extension EventStore {
    /// An inspector over this store: the store's own for an ``InspectableEventStore``, otherwise
    /// one that scans the log.
    public var inspector: any StoreInspector {
        if let inspectable = self as? any InspectableEventStore { return inspectable.makeInspector() }
        return LogScanningInspector(store: self)
    }
}

// MARK: Generic implementation

/// Answers inspection by reading the whole log through the ``EventStore`` protocol: correct for
/// any store, in time proportional to the log. For the in-memory store and tests.
package struct LogScanningInspector: StoreInspector {
    /// The store inspected.
    package let store: any EventStore

    /// Inspects `store`.
    package init(store: any EventStore) {
        self.store = store
    }

    private func scan(filter: EventFilter = .all, _ body: (RecordedEvent) -> Void) async throws {
        var position = LogPosition.start
        let page = min(1_000, store.limits.maxPageSize)
        while true {
            let events = try await store.readAll(after: position, limit: page, filter: filter)
            for e in events { body(e) }
            guard let last = events.last, events.count == page else { return }
            position = last.logPosition
        }
    }

    private func allStreams(category: String?) async throws -> [StreamInfo] {
        var byStream: [String: StreamInfo] = [:]
        let filter = category.map { EventFilter(categories: [$0]) } ?? .all
        try await scan(filter: filter) { e in
            byStream[e.stream] = StreamInfo(
                stream: e.stream, version: e.streamVersion, lastPosition: e.position, lastWrittenAt: e.recordedAt)
        }
        return byStream.values.sorted { $0.stream.utf8.lexicographicallyPrecedes($1.stream.utf8) }
    }

    package func streams(category: String?, after: String?, limit: Int) async throws -> StreamPage {
        try store.limits.validate(pageSize: limit)
        let all = try await allStreams(category: category)
        let rest = all.filter { after == nil || after!.utf8.lexicographicallyPrecedes($0.stream.utf8) }
        let page = Array(rest.prefix(limit))
        return StreamPage(streams: page, next: rest.count > limit ? page.last?.stream : nil)
    }

    package func stream(_ stream: String) async throws -> StreamInfo? {
        let last = try await store.readStream(stream, from: .max, direction: .backward, limit: 1)
        return last.first.map {
            StreamInfo(
                stream: stream, version: $0.streamVersion, lastPosition: $0.position, lastWrittenAt: $0.recordedAt)
        }
    }

    package func subscriptions(filters: [String: EventFilter]) async throws -> [SubscriptionInfo] {
        let defaults = store.pipelineDefaults
        let checkpoints = try await defaults.checkpoints.checkpoints()
        let parked = try await defaults.parkedEvents.parkedEvents(subscription: nil, limit: Int.max)
        var result: [SubscriptionInfo] = []
        for c in checkpoints {
            var lag: Int64 = 0
            var oldest: Date?
            var position = c.position
            let filter = filters[c.subscription] ?? .all
            let page = min(1_000, store.limits.maxPageSize)
            while true {
                let events = try await store.readAll(after: position, limit: page, filter: filter)
                if oldest == nil { oldest = events.first?.recordedAt }
                lag += Int64(events.count)
                guard let last = events.last, events.count == page else { break }
                position = last.logPosition
            }
            result.append(
                SubscriptionInfo(
                    subscription: c.subscription, checkpoint: c.position, checkpointUpdatedAt: c.updatedAt,
                    lagEvents: lag, lagSeconds: oldest.map { max(0, Date().timeIntervalSince($0)) } ?? 0,
                    filtered: filters[c.subscription] != nil, lease: nil, activity: .unknown,
                    parked: parked.filter { $0.subscription == c.subscription }.count))
        }
        return result
    }

    package func statistics(category: String?) async throws -> EventStatistics {
        var types: [String: EventStatistics.TypeCount] = [:]
        var days: [String: Int64] = [:]
        var streams = Set<String>()
        var total: Int64 = 0
        let filter = category.map { EventFilter(categories: [$0]) } ?? .all
        try await scan(filter: filter) { e in
            total += 1
            streams.insert(e.stream)
            if var t = types[e.type] {
                t.count += 1
                t.first = min(t.first, e.recordedAt)
                t.last = max(t.last, e.recordedAt)
                types[e.type] = t
            } else {
                types[e.type] = .init(type: e.type, count: 1, first: e.recordedAt, last: e.recordedAt)
            }
            days[utcDay(e.recordedAt), default: 0] += 1
        }
        return EventStatistics(
            events: total, streams: Int64(streams.count), byType: Array(types.values),
            byDay: days.map { .init(day: $0.key, count: $0.value) })
    }
}

/// `YYYY-MM-DD` of `date` in UTC.
func utcDay(_ date: Date) -> String {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: "UTC")!
    let c = calendar.dateComponents([.year, .month, .day], from: date)
    return String(format: "%04d-%02d-%02d", c.year ?? 0, c.month ?? 0, c.day ?? 0)
}
