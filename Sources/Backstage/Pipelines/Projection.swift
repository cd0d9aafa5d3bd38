import Foundation
import Synchronization

/// What a projection commits together with its read-model writes.
public enum ProjectionCommit: Sendable, Hashable {
    /// Move the checkpoint of `subscription` from `expected` to `new` (compare-and-set, fenced by
    /// `token`) in the same transaction as the writes; throw ``CheckpointError`` when it does not match.
    case checkpoint(subscription: String, expected: LogPosition?, new: LogPosition, token: Int64)
    /// A parked event is being replayed: leave the checkpoint alone and, when the parked-event
    /// store lives in the same database, remove the parked record in the same transaction.
    case replay(subscription: String, position: LogPosition)
}

/// A read model kept up to date from the log, exactly once: each batch's writes and its
/// checkpoint commit in one transaction.
///
/// A projection is versioned: version N writes into its own tables; a rebuild fills version N+1
/// from the origin while N keeps serving, then ``activate(version:replacing:)`` switches readers.
/// The core ships ``InMemoryProjection``; `BackstageSQLite` ships `SQLiteProjection` for tables
/// in SQLite through GRDB.
///
/// Batches are applied in log order by one writer (a projection has no concurrency setting), so
/// the checkpoint of each batch is its last event's position: the low watermark.
public protocol Projection: Sendable {
    /// The projection's name: `[A-Za-z0-9_.-]`; its subscription for version N is `name@vN`.
    var name: String { get }
    /// Which events it reads; evaluated in the database.
    var filter: EventFilter { get }
    /// Batching, failure policy, consistency.
    var options: ProjectionOptions { get }
    /// Where its checkpoints live: the same database as its tables.
    var checkpoints: any CheckpointStore { get }
    /// Where its parked events go; nil: the pipeline service's store.
    var parkedEvents: (any ParkedEventStore)? { get }
    /// The version readers use now (creates version 1 on first use).
    func activeVersion() async throws -> Int
    /// Creates the tables of `version` if they do not exist (a rebuild resumes into them).
    func prepare(version: Int) async throws
    /// Applies `events` (in log order) to the tables of `version` and performs `commit`, all in
    /// one transaction; nothing is written when it throws.
    func apply(_ events: [RecordedEvent], version: Int, commit: ProjectionCommit) async throws
    /// Makes `version` the one readers see and drops `old` (its tables and checkpoint).
    func activate(version: Int, replacing old: Int) async throws
}

extension Projection {
    /// The service's parked-event store.
    public var parkedEvents: (any ParkedEventStore)? { nil }
}

/// The subscription id of version `version` of the projection `name`.
package func projectionSubscription(_ name: String, version: Int) -> String { "\(name)@v\(version)" }

/// Batching, failure policy and consistency of a projection.
public struct ProjectionOptions: Sendable {
    /// Most events applied in one transaction.
    public var batchSize: Int = 500
    /// How long the writer waits for a batch to fill before applying a partial one.
    public var batchTimeout: Duration = .milliseconds(2)
    /// Retries and final action for a failing batch (split into single events when retries run out).
    public var failurePolicy = FailurePolicy()
    /// Most events held in memory (read but not yet applied).
    public var maxInFlight: Int = 2_000
    /// Events read from the store per page.
    public var pageSize: Int = 1_000
    /// How often the source polls the store when no notification arrived.
    public var pollInterval: Duration = .seconds(1)
    /// Whether `Consistency.strong` dispatches wait for this projection.
    public var stronglyConsistent = true
    /// Partitions the projection's subscription is split into, by ``partitionKey`` (1: one
    /// subscription, today's behaviour). Each partition (`name@vN#p/count`) has its own checkpoint,
    /// lease and fencing token; the live processes share them (see the Partitions article). The read
    /// model must then only need the order of events within one key. Needs a store that selects
    /// partitions (PostgreSQL, in-memory).
    public var partitions: Int = 1
    /// What a partitioned projection is partitioned by: ``PartitionKey/stream`` (the default) or
    /// ``PartitionKey/category``; events of one key are applied in log order.
    public var partitionKey: PartitionKey = .stream

    /// The defaults, with any of the settings changed.
    public init(
        batchSize: Int = 500, batchTimeout: Duration = .milliseconds(2), failurePolicy: FailurePolicy = FailurePolicy(),
        maxInFlight: Int = 2_000, stronglyConsistent: Bool = true, pageSize: Int = 1_000,
        pollInterval: Duration = .seconds(1), partitions: Int = 1
    ) {
        self.partitions = partitions
        self.batchSize = batchSize
        self.batchTimeout = batchTimeout
        self.failurePolicy = failurePolicy
        self.maxInFlight = maxInFlight
        self.stronglyConsistent = stronglyConsistent
        self.pageSize = pageSize
        self.pollInterval = pollInterval
    }
}

/// A projection whose read model is a value in memory, updated by a pure function. The state
/// and the checkpoint change together under one lock, so each event takes effect exactly once.
///
/// ```swift
/// let sales = InMemoryProjection(name: "sales", initial: [String: Int]()) { totals, event in
///     if let sold = try event.decode(as: TicketSold.self) { totals[sold.showID, default: 0] += sold.price }
/// }
/// ```
///
/// To receive typed events (decoded and upcast by the family's codec, filter derived from the
/// family), use ``init(name:consuming:options:decodeFailure:initial:apply:)``.
public final class InMemoryProjection<State: Sendable>: Projection {
    private struct Storage: CheckpointedState {
        var versions: [Int: State] = [:]
        var active = 1
        var checkpoints: [String: Checkpoint] = [:]
    }

    /// The projection's name.
    public let name: String
    /// Which events it reads.
    public let filter: EventFilter
    /// Batching, failure policy, consistency.
    public let options: ProjectionOptions
    private let initial: State
    private let update: @Sendable (inout State, RecordedEvent) throws -> Void
    private let box = LockedCheckpointStore(Storage())

    /// Creates a projection that folds events into `initial` with `apply`.
    public init(
        name: String, filter: EventFilter = .all, options: ProjectionOptions = ProjectionOptions(),
        initial: State, apply: @escaping @Sendable (inout State, RecordedEvent) throws -> Void
    ) {
        self.name = name
        self.filter = filter
        self.options = options
        self.initial = initial
        self.update = apply
    }

    /// Where its checkpoints live (next to the state).
    public var checkpoints: any CheckpointStore { box }

    /// The state readers see (the active version).
    public var state: State {
        box.storage.withLock { $0.versions[$0.active] ?? initial }
    }

    /// The state of one version, if it exists.
    public func state(version: Int) -> State? {
        box.storage.withLock { $0.versions[version] }
    }

    public func activeVersion() async throws -> Int {
        box.storage.withLock { s in
            if s.versions[s.active] == nil { s.versions[s.active] = initial }
            return s.active
        }
    }

    public func prepare(version: Int) async throws {
        box.storage.withLock { s in
            if s.versions[version] == nil { s.versions[version] = initial }
        }
    }

    public func apply(_ events: [RecordedEvent], version: Int, commit: ProjectionCommit) async throws {
        try box.storage.withLock { s in
            var state = s.versions[version] ?? initial
            for event in events { try update(&state, event) }
            if case .checkpoint(let subscription, let expected, let new, let token) = commit {
                try checkCheckpointCommit(
                    subscription, stored: s.checkpoints[subscription], expected: expected, token: token)
                s.checkpoints[subscription] = Checkpoint(subscription: subscription, position: new, token: token)
            }
            s.versions[version] = state
        }
    }

    public func activate(version: Int, replacing old: Int) async throws {
        box.storage.withLock { s in
            s.active = version
            if old != version {
                s.versions[old] = nil
                s.checkpoints[projectionSubscription(name, version: old)] = nil
            }
        }
    }
}
