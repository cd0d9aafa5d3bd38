import Foundation
import Synchronization

/// A command waiting in the outbox: produced by a process manager (stored with its triggering
/// event's checkpoint) or scheduled by application code, dispatched by a ``CommandScheduler``
/// when it comes due and deleted after dispatch.
public struct OutboxCommand: Sendable, Hashable {
    /// The command id used for the dispatch: deterministic for process managers (derived from
    /// the process name, the triggering event and the command's index), so redelivery and
    /// repeated dispatch are harmless.
    public var id: UUID
    /// The process manager that produced it; empty for commands scheduled by application code.
    public var process: String
    /// The process instance (correlation key); empty when none.
    public var instance: String
    /// The command's name (``Command/commandName``), used to decode it through a ``CommandCatalog``.
    public var commandName: String
    /// The command, as JSON with sorted keys.
    public var data: Data
    /// The message that caused the command (the triggering event's id).
    public var causationID: UUID?
    /// The correlation id the command carries on.
    public var correlationID: UUID?
    /// When it comes due.
    public var dueAt: Date
    /// The key that cancels it, if any.
    public var cancelKey: String?
    /// Failed dispatch attempts so far.
    public var attempts: Int
    /// The last dispatch error, if any.
    public var lastError: String?
    /// When it was stored.
    public var createdAt: Date

    /// Creates an outbox command.
    package init(
        id: UUID, process: String = "", instance: String = "", commandName: String, data: Data,
        causationID: UUID? = nil, correlationID: UUID? = nil, dueAt: Date, cancelKey: String? = nil,
        attempts: Int = 0, lastError: String? = nil, createdAt: Date = Date()
    ) {
        self.id = id
        self.process = process
        self.instance = instance
        self.commandName = commandName
        self.data = data
        self.causationID = causationID
        self.correlationID = correlationID
        self.dueAt = dueAt
        self.cancelKey = cancelKey
        self.attempts = attempts
        self.lastError = lastError
        self.createdAt = createdAt
    }
}

/// A process instance as stored: its key and its state as JSON.
package struct StoredProcessInstance: Sendable, Hashable {
    /// The process manager's name.
    package var process: String
    /// The correlation key.
    package var key: String
    /// The state, as JSON.
    package var state: Data
    /// When it last changed.
    package var updatedAt: Date

    /// Creates a stored instance.
    package init(process: String, key: String, state: Data, updatedAt: Date) {
        self.process = process
        self.key = key
        self.state = state
        self.updatedAt = updatedAt
    }
}

/// What one batch of a process manager writes (in its transaction, with its checkpoint).
package struct ProcessChanges: Sendable {
    /// Instances created or changed: key -> state JSON.
    package var upserts: [String: Data] = [:]
    /// Instances stopped.
    package var deletes: Set<String> = []
    /// Cancel keys whose stored commands are deleted (before ``commands`` are inserted).
    package var cancels: [String] = []
    /// Commands to store.
    package var commands: [OutboxCommand] = []

    /// No changes.
    package init() {}
}

/// What the scheduler did with a claimed outbox command.
package enum OutboxOutcome: Sendable, Hashable {
    /// Dispatched (or skipped): delete it.
    case done
    /// Failed: keep it, due again at `at`, with the error and one more attempt.
    case retry(at: Date, error: String)
    /// Delete it, the process instance it belongs to, and every other command of that instance.
    case stopInstance
}

/// Where process instances and the command outbox live: the event store's database, next to the
/// checkpoints, so a batch's instance changes, its commands and its checkpoint commit together.
///
/// Backends: ``InMemoryProcessStore``, `SQLiteProcessStore` (BackstageSQLite) and
/// `PostgresProcessStore` (BackstagePostgres). An application creates one and hands it to its
/// ``ProcessManagerProjection``s and its ``CommandScheduler``; the operations are theirs.
public protocol ProcessStore: Sendable {
    /// The store's operations, for the process managers and the scheduler.
    var storage: ProcessStorage { get }
}

/// The operations of a ``ProcessStore`` (opaque: the backends are Backstage's).
public struct ProcessStorage: Sendable {
    package let backend: any ProcessStoreBackend
    package init(_ backend: any ProcessStoreBackend) { self.backend = backend }
}

/// What a process store does (the backends' side of ``ProcessStore``).
package protocol ProcessStoreBackend: Sendable {
    /// Where the process managers' checkpoints live (the same database).
    var checkpoints: any CheckpointStore { get }
    /// Where their parked events live; nil: the pipeline service's store.
    var parkedEvents: (any ParkedEventStore)? { get }

    /// In one transaction: performs `commit` (the checkpoint compare-and-set, or the removal of a
    /// replayed parked event), loads the stored instances of `process` with the given keys,
    /// calls `compute` with them, and writes its changes. Nothing is written when anything throws.
    func transact(
        process: String, keys: Set<String>, commit: ProjectionCommit,
        compute: @Sendable ([String: Data]) throws -> ProcessChanges
    ) async throws

    /// The instances of `process`, by key.
    func instances(process: String) async throws -> [StoredProcessInstance]
    /// Deletes an instance and its pending commands (an operator's or a failure policy's stop).
    func deleteInstance(process: String, key: String) async throws

    /// Stores commands scheduled by application code.
    func schedule(_ commands: [OutboxCommand]) async throws
    /// Deletes the pending commands with `key`; returns how many.
    func cancel(key: String) async throws -> Int
    /// Pending commands, earliest due first.
    func pending(limit: Int) async throws -> [OutboxCommand]
    /// The earliest due time of a pending command.
    func nextDue() async throws -> Date?
    /// Claims up to `limit` commands due at `now`, one at a time, calls `dispatch` for each and
    /// records its outcome. Across processes (PostgreSQL) each due command is claimed by exactly
    /// one of them: the claim holds the row until the outcome is recorded. Returns how many it handled.
    func dispatchDue(now: Date, limit: Int, dispatch: @Sendable (OutboxCommand) async -> OutboxOutcome)
        async throws -> Int
}

extension ProcessStore {
    package var checkpoints: any CheckpointStore { storage.backend.checkpoints }
    package var parkedEvents: (any ParkedEventStore)? { storage.backend.parkedEvents }
    package func transact(
        process: String, keys: Set<String>, commit: ProjectionCommit,
        compute: @Sendable ([String: Data]) throws -> ProcessChanges
    ) async throws {
        try await storage.backend.transact(process: process, keys: keys, commit: commit, compute: compute)
    }
    package func instances(process: String) async throws -> [StoredProcessInstance] {
        try await storage.backend.instances(process: process)
    }
    package func deleteInstance(process: String, key: String) async throws {
        try await storage.backend.deleteInstance(process: process, key: key)
    }
    package func schedule(_ commands: [OutboxCommand]) async throws { try await storage.backend.schedule(commands) }
    package func cancel(key: String) async throws -> Int { try await storage.backend.cancel(key: key) }
    package func pending(limit: Int) async throws -> [OutboxCommand] { try await storage.backend.pending(limit: limit) }
    package func nextDue() async throws -> Date? { try await storage.backend.nextDue() }
    package func dispatchDue(now: Date, limit: Int, dispatch: @Sendable (OutboxCommand) async -> OutboxOutcome)
        async throws -> Int
    {
        try await storage.backend.dispatchDue(now: now, limit: limit, dispatch: dispatch)
    }
}

/// Process instances, outbox and checkpoints in memory, under one lock: each batch's changes
/// and its checkpoint take effect together. For tests and the in-memory store.
public final class InMemoryProcessStore: ProcessStore, ProcessStoreBackend {
    struct Storage: CheckpointedState {
        var instances: [String: [String: (Data, Date)]] = [:]
        var outbox: [UUID: OutboxCommand] = [:]
        var checkpoints: [String: Checkpoint] = [:]
        var claimed: Set<UUID> = []
    }
    private let box = LockedCheckpointStore(Storage())

    /// Creates an empty store.
    public init() {}

    /// Its operations.
    public var storage: ProcessStorage { ProcessStorage(self) }

    /// Its checkpoints (next to the instances).
    package var checkpoints: any CheckpointStore { box }
    /// The pipeline service's parked-event store.
    package var parkedEvents: (any ParkedEventStore)? { nil }

    package func transact(
        process: String, keys: Set<String>, commit: ProjectionCommit,
        compute: @Sendable ([String: Data]) throws -> ProcessChanges
    ) async throws {
        try box.storage.withLock { s in
            if case .checkpoint(let subscription, let expected, _, let token) = commit {
                try checkCheckpointCommit(
                    subscription, stored: s.checkpoints[subscription], expected: expected, token: token)
            }
            var loaded: [String: Data] = [:]
            for key in keys { if let (data, _) = s.instances[process]?[key] { loaded[key] = data } }
            let changes = try compute(loaded)
            let now = Date()
            for key in changes.deletes { s.instances[process]?[key] = nil }
            for (key, data) in changes.upserts { s.instances[process, default: [:]][key] = (data, now) }
            for key in changes.cancels {
                s.outbox = s.outbox.filter { $0.value.cancelKey != key || s.claimed.contains($0.key) }
            }
            for command in changes.commands where s.outbox[command.id] == nil { s.outbox[command.id] = command }
            if case .checkpoint(let subscription, _, let new, let token) = commit {
                s.checkpoints[subscription] = Checkpoint(subscription: subscription, position: new, token: token)
            }
        }
    }

    package func instances(process: String) async throws -> [StoredProcessInstance] {
        box.storage.withLock { s in
            (s.instances[process] ?? [:]).map {
                StoredProcessInstance(process: process, key: $0.key, state: $0.value.0, updatedAt: $0.value.1)
            }.sorted { $0.key < $1.key }
        }
    }

    package func deleteInstance(process: String, key: String) async throws {
        box.storage.withLock { s in
            s.instances[process]?[key] = nil
            s.outbox = s.outbox.filter { !($0.value.process == process && $0.value.instance == key) }
        }
    }

    package func schedule(_ commands: [OutboxCommand]) async throws {
        box.storage.withLock { s in
            for command in commands where s.outbox[command.id] == nil { s.outbox[command.id] = command }
        }
    }

    package func cancel(key: String) async throws -> Int {
        box.storage.withLock { s in
            let before = s.outbox.count
            s.outbox = s.outbox.filter { $0.value.cancelKey != key || s.claimed.contains($0.key) }
            return before - s.outbox.count
        }
    }

    package func pending(limit: Int) async throws -> [OutboxCommand] {
        box.storage.withLock { s in
            Array(s.outbox.values.sorted { ($0.dueAt, $0.createdAt) < ($1.dueAt, $1.createdAt) }.prefix(max(limit, 0)))
        }
    }

    package func nextDue() async throws -> Date? {
        box.storage.withLock { s in s.outbox.values.filter { !s.claimed.contains($0.id) }.map(\.dueAt).min() }
    }

    package func dispatchDue(now: Date, limit: Int, dispatch: @Sendable (OutboxCommand) async -> OutboxOutcome)
        async throws -> Int
    {
        var handled = 0
        while handled < limit {
            let next = box.storage.withLock { s -> OutboxCommand? in
                guard
                    let command = s.outbox.values.filter({ $0.dueAt <= now && !s.claimed.contains($0.id) })
                        .min(by: { ($0.dueAt, $0.createdAt) < ($1.dueAt, $1.createdAt) })
                else { return nil }
                s.claimed.insert(command.id)
                return command
            }
            guard let command = next else { break }
            let outcome = await dispatch(command)
            box.storage.withLock { s in
                s.claimed.remove(command.id)
                switch outcome {
                case .done:
                    s.outbox[command.id] = nil
                case .retry(let at, let error):
                    s.outbox[command.id]?.dueAt = at
                    s.outbox[command.id]?.attempts += 1
                    s.outbox[command.id]?.lastError = error
                case .stopInstance:
                    s.outbox[command.id] = nil
                    if !command.process.isEmpty {
                        s.instances[command.process]?[command.instance] = nil
                        s.outbox = s.outbox.filter {
                            !($0.value.process == command.process && $0.value.instance == command.instance)
                        }
                    }
                }
            }
            handled += 1
        }
        return handled
    }
}
