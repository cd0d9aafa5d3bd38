import Foundation
import Synchronization

/// The stored progress of one subscription: the low watermark of the events it has done.
///
/// Every matching event at or before ``position`` (in `readAll` order) is done; none after it is
/// assumed done. A subscription resumes after it.
public struct Checkpoint: Sendable, Hashable {
    /// The subscription's id (a handler's or projection's name).
    public var subscription: String
    /// The low watermark.
    public var position: LogPosition
    /// The fencing token (lease generation) of the process that wrote it.
    public var token: Int64
    /// When it was written.
    public var updatedAt: Date

    /// Creates a checkpoint.
    public init(subscription: String, position: LogPosition, token: Int64, updatedAt: Date = Date()) {
        self.subscription = subscription
        self.position = position
        self.token = token
        self.updatedAt = updatedAt
    }
}

/// Why a checkpoint commit was refused. Nothing was written.
public enum CheckpointError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The stored checkpoint is not the one the committer started from: another process moved it.
    case conflict(subscription: String, expected: LogPosition?, actual: LogPosition?)
    /// The committer's fencing token is older than the stored one: it lost the leadership.
    case fenced(subscription: String, token: Int64, current: Int64)

    public var description: String {
        switch self {
        case .conflict(let s, let expected, let actual):
            "checkpoint of '\(s)' is at \(actual.map { "\($0)" } ?? "none"), not at \(expected.map { "\($0)" } ?? "none") as expected: another process moved it"
        case .fenced(let s, let token, let current):
            "checkpoint of '\(s)' was not moved: fencing token \(token) is older than the stored token \(current) (leadership lost)"
        }
    }
}

/// Where subscriptions keep their checkpoints.
///
/// ``commit(_:expected:new:token:)`` is a compare-and-set: it only writes when the stored position
/// is `expected` and the stored token is not newer than `token`, so a stale process (one that lost
/// its lease, or a second copy of the same subscription) cannot move a checkpoint.
public protocol CheckpointStore: Sendable {
    /// The stored checkpoint of `subscription`, if any.
    func checkpoint(_ subscription: String) async throws -> Checkpoint?
    /// Moves the checkpoint of `subscription` from `expected` (nil: none stored yet) to `new`.
    /// - Throws: ``CheckpointError`` when the stored state is not `expected` or the token is older.
    func commit(_ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64) async throws
    /// Every stored checkpoint.
    func checkpoints() async throws -> [Checkpoint]
    /// Deletes the checkpoint of `subscription` (the next run starts from its start position).
    func delete(_ subscription: String) async throws
}

/// Checks a compare-and-set checkpoint commit against the stored checkpoint (shared by the stores).
package func checkCheckpointCommit(
    _ subscription: String, stored: Checkpoint?, expected: LogPosition?, token: Int64
) throws(CheckpointError) {
    if let stored, token < stored.token {
        throw .fenced(subscription: subscription, token: token, current: stored.token)
    }
    if stored?.position != expected {
        throw .conflict(subscription: subscription, expected: expected, actual: stored?.position)
    }
}

/// Checkpoints in memory: for tests and the in-memory store.
package final class InMemoryCheckpointStore: CheckpointStore {
    private let state = Mutex<[String: Checkpoint]>([:])

    /// Creates an empty store.
    package init() {}

    package func checkpoint(_ subscription: String) async throws -> Checkpoint? {
        state.withLock { $0[subscription] }
    }

    package func commit(_ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64) async throws {
        try state.withLock { s throws(CheckpointError) in
            try checkCheckpointCommit(subscription, stored: s[subscription], expected: expected, token: token)
            s[subscription] = Checkpoint(subscription: subscription, position: new, token: token)
        }
    }

    package func checkpoints() async throws -> [Checkpoint] {
        state.withLock { Array($0.values).sorted { $0.subscription < $1.subscription } }
    }

    package func delete(_ subscription: String) async throws {
        _ = state.withLock { $0.removeValue(forKey: subscription) }
    }
}

/// State kept in memory with the checkpoints of the subscriptions that update it.
package protocol CheckpointedState {
    /// The checkpoints, by subscription.
    var checkpoints: [String: Checkpoint] { get set }
}

/// In-memory state and its checkpoints under one lock, so a batch's changes and its checkpoint
/// take effect together: the checkpoint store of ``InMemoryProjection`` and ``InMemoryProcessStore``.
package final class LockedCheckpointStore<State: CheckpointedState>: CheckpointStore {
    /// The state and its checkpoints.
    package let storage: Mutex<State>

    package init(_ initial: sending State) { storage = Mutex(initial) }

    package func checkpoint(_ subscription: String) async throws -> Checkpoint? {
        storage.withLock { $0.checkpoints[subscription] }
    }

    package func commit(_ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64) async throws {
        try storage.withLock { s throws(CheckpointError) in
            try checkCheckpointCommit(
                subscription, stored: s.checkpoints[subscription], expected: expected, token: token)
            s.checkpoints[subscription] = Checkpoint(subscription: subscription, position: new, token: token)
        }
    }

    package func checkpoints() async throws -> [Checkpoint] {
        storage.withLock { Array($0.checkpoints.values) }
    }

    package func delete(_ subscription: String) async throws {
        _ = storage.withLock { $0.checkpoints.removeValue(forKey: subscription) }
    }
}

/// Decides which process runs a subscription. Each subscription has one active consumer at a
/// time; its fencing token goes with every checkpoint commit.
///
/// The in-memory store's process leads every subscription; `SQLiteLeadership` (lease rows in the
/// file) and `PostgresLeadership` (advisory locks and lease rows) elect across processes.
public protocol LeaderElection: Sendable {
    /// Waits until this process leads `subscription`; returns the lease's fencing token, which
    /// must be greater than or equal to every token issued before for that subscription.
    func acquire(_ subscription: String) async throws -> Int64
    /// Whether the lease with `token` is still held. Checked before every batch and commit.
    func isLeader(_ subscription: String, token: Int64) async -> Bool
    /// Gives the lease up (at shutdown).
    func release(_ subscription: String, token: Int64) async
    /// Runs the election's background work (connections, heartbeats) until cancelled; PipelineService runs it for its lifetime.
    func run() async throws
    /// Waits until this process owns partition `partition` of `count` of the subscription `base`;
    /// returns the lease's fencing token. The partition's id for ``isLeader(_:token:)`` and
    /// ``release(_:token:)`` is `partitionSubscription(_:partition:of:)`. An election shared by
    /// processes spreads the partitions over the live processes that run `base`, and takes a
    /// partition back when its fair share changes (then ``isLeader(_:token:)`` turns false).
    /// The default is ``acquire(_:)`` of the partition's id.
    func acquire(partition: Int, of count: Int, subscription base: String) async throws -> Int64
    /// Who holds the leases of `subscriptions` (as the election names its processes), for status
    /// screens; the default knows nobody.
    func owners(_ subscriptions: [String]) async throws -> [String: String]
}

extension LeaderElection {
    public func run() async throws {}
    public func acquire(partition: Int, of count: Int, subscription base: String) async throws -> Int64 {
        try await acquire(partitionSubscription(base, partition: partition, of: count))
    }
    public func owners(_ subscriptions: [String]) async throws -> [String: String] { [:] }
}

/// Leadership for a single process: always the leader, token 0.
package struct SingleProcessLeadership: LeaderElection {
    /// Creates the trivial election.
    package init() {}
    /// Returns token 0 at once.
    package func acquire(_ subscription: String) async throws -> Int64 { 0 }
    /// Always true.
    package func isLeader(_ subscription: String, token: Int64) async -> Bool { true }
    /// Does nothing.
    package func release(_ subscription: String, token: Int64) async {}
}
