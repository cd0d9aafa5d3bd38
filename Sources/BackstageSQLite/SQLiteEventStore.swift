import Backstage
import DequeModule
import Foundation
import GRDB
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Errors of the SQLite backend (event store errors are `EventStoreError`): what SQLite or
/// GRDB reported, never the driver's own error type.
public enum SQLiteStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// SQLite answered with an error: its result code (`SQLITE_BUSY` is 5, `SQLITE_FULL` 13, ...)
    /// and message.
    case database(resultCode: Int32, message: String)
    /// The database held something the store did not expect (a bug or a foreign schema).
    case unexpectedResult(String)
    /// The store was closed.
    case closed

    public var description: String {
        switch self {
        case .database(let code, let message): "SQLite error \(code): \(message)"
        case .unexpectedResult(let what): "unexpected result from SQLite: \(what)"
        case .closed: "the SQLite event store is closed"
        }
    }

    /// `error` as callers may see it: Backstage errors and `CancellationError` unchanged, an
    /// interrupted statement of a cancelled task as `CancellationError`, anything else wrapped.
    static func translate(_ error: any Error) -> any Error {
        switch error {
        case is EventStoreError, is SQLiteStoreError, is CancellationError:
            return error
        case let error as DatabaseError:
            if error.resultCode == .SQLITE_INTERRUPT || error.resultCode == .SQLITE_ABORT, Task.isCancelled {
                return CancellationError()
            }
            return SQLiteStoreError.database(
                resultCode: error.extendedResultCode.rawValue, message: error.message ?? "\(error.resultCode)")
        default:
            if Task.isCancelled { return CancellationError() }
            return SQLiteStoreError.unexpectedResult("\(error)")
        }
    }
}

/// Runs `body`, translating driver errors (see ``SQLiteStoreError``).
@inline(__always)
func translatingErrors<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        throw SQLiteStoreError.translate(error)
    }
}

/// The embedded event store: one SQLite file in WAL mode, through GRDB.
///
/// - One writer at a time (`BEGIN IMMEDIATE`), so positions (the table's integer key: the largest
///   plus one for each new event, and events are never deleted) are committed in order and a
///   reader that resumes after a position never misses an event.
/// - **Group commit**: appends that wait at the same moment, from any number of tasks, are written
///   in one transaction (one fsync), each inside its own savepoint and checked on its own, so one
///   conflict rejects only its own append.
/// - Events are immutable: triggers reject `UPDATE` and `DELETE` on the events table.
/// - Several processes may open the same file; the expected-version check runs inside the write
///   transaction, so it holds across processes.
///
/// ```swift
/// let store = try SQLiteEventStore(path: "app.sqlite")
/// ```
///
/// Or on a GRDB database the application already has (its `DatabasePool`, or a `DatabaseQueue`
/// in tests), next to its own tables:
///
/// ```swift
/// let store = try SQLiteEventStore(database: pool)
/// ```
///
/// ## Lifecycle
///
/// The store is ready when its initialiser returns (SQLite opens and migrates synchronously, as
/// GRDB does). It is also a swift-service-lifecycle `Service`, like `PostgresEventStore`: in an
/// application's `ServiceGroup`, listed before the services that use it, ``run()`` closes it on
/// graceful shutdown, after them. Scripts and tests use ``withStore(_:_:)`` or call ``close()``.
public final class SQLiteEventStore: EventStore {
    /// How much an acknowledged append survives.
    public enum Durability: Sendable, Hashable {
        /// Survives power loss: `synchronous=FULL` (the default).
        case full
        /// Survives a crash of the process, may lose the last commits on power loss: `synchronous=NORMAL`.
        case normal
        /// No syncs at all: for tests and throwaway data only.
        case off
    }

    /// Settings of the store.
    public struct Configuration: Sendable {
        /// How much an acknowledged append survives. Defaults to ``Durability/full``.
        public var durability: Durability = .full
        /// Limits that reject bad input before it reaches the database.
        public var limits = StoreLimits()
        /// How long a write waits for another process that holds the write lock.
        public var busyTimeout: Duration = .seconds(10)
        /// Most appends written in one group-commit transaction.
        public var maxAppendsPerCommit: Int = 1_000
        /// Number of concurrent readers.
        public var maxReaders: Int = 8
        /// Where the store logs migrations and closing problems.
        public var logger = Logger(label: "backstage.sqlite")

        /// The defaults.
        public init() {}
    }

    /// The database. Projections may keep their read models in it.
    public let database: any DatabaseWriter
    /// The limits this store enforces.
    public let limits: StoreLimits
    /// Checkpoints, parked events and lease leadership in this file (`SQLiteCheckpointStore`,
    /// `SQLiteParkedEventStore`, ``SQLiteLeadership``), shared by every `PipelineService` over
    /// this store that is not given others.
    public let pipelineDefaults: PipelineDefaults
    let configuration: Configuration
    let logger: Logger
    /// Whether ``close()`` closes ``database`` (the store opened it).
    private let ownsDatabase: Bool
    private let readiness = ServiceReadiness(closedError: SQLiteStoreError.closed)
    private let notifier = AppendNotifier()
    private let queue = Mutex(WriteQueue())
    private let metrics = SQLiteStoreMetrics()

    /// Opens (or creates) the store at `path` and migrates its schema.
    ///
    /// - Throws: ``SQLiteStoreError`` when the file cannot be opened or migrated.
    public convenience init(path: String, configuration: Configuration = Configuration()) throws {
        let pool: DatabasePool
        do {
            pool = try Self.openPool(path, configuration: configuration)
        } catch {
            throw SQLiteStoreError.translate(error)
        }
        try self.init(database: pool, owned: true, configuration: configuration)
    }

    /// Uses `database`, an application's own GRDB database (a `DatabasePool` in production, a
    /// `DatabaseQueue` in tests), and migrates the store's tables into it (they are prefixed
    /// `backstage_`; migrations are recorded in GRDB's `grdb_migrations` table, next to the
    /// application's own). The store does not close `database`. ``Configuration/durability``,
    /// ``Configuration/busyTimeout`` and ``Configuration/maxReaders`` are the application's
    /// choice there (GRDB's `Configuration` when it opened the database); the defaults of a file
    /// the store opens itself are `synchronous=FULL`, WAL, and a 10 s busy timeout.
    ///
    /// - Throws: ``SQLiteStoreError`` when the schema cannot be migrated.
    public convenience init(database: any DatabaseWriter, configuration: Configuration = Configuration()) throws {
        try self.init(database: database, owned: false, configuration: configuration)
    }

    private init(database: any DatabaseWriter, owned: Bool, configuration: Configuration) throws {
        self.database = database
        self.ownsDatabase = owned
        self.limits = configuration.limits
        self.configuration = configuration
        self.logger = configuration.logger
        do {
            try Self.migrate(database, logger: configuration.logger)
            self.pipelineDefaults = PipelineDefaults(
                checkpoints: try SQLiteCheckpointStore(database: database),
                parkedEvents: try SQLiteParkedEventStore(database: database),
                leadership: try SQLiteLeadership(database: database))
        } catch {
            if owned { try? database.close() }
            throw SQLiteStoreError.translate(error)
        }
        readiness.markReady()
    }

    /// A WAL pool at `path` with the configuration's durability, busy timeout and readers.
    private static func openPool(_ path: String, configuration: Configuration) throws -> DatabasePool {
        var config = GRDB.Configuration()
        let timeout = configuration.busyTimeout.components
        config.busyMode = .timeout(Double(timeout.seconds) + Double(timeout.attoseconds) / 1e18)
        config.maximumReaderCount = max(configuration.maxReaders, 1)
        let synchronous =
            switch configuration.durability {
            case .full: "FULL"
            case .normal: "NORMAL"
            case .off: "OFF"
            }
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
        }
        let pool = try DatabasePool(path: path, configuration: config)
        // GRDB turns WAL on for the writer connection after `prepareDatabase` and sets
        // synchronous=NORMAL with it: set the durability again on the writer, the only
        // connection that commits.
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
        }
        return pool
    }

    /// Applies the store's migrations that `database` has not seen yet.
    ///
    /// Several processes may open an older file at the same moment: a web process and a worker
    /// started together. GRDB's migrator lists the migrations to run, then runs them one
    /// transaction each, so a process that waited for another's migration runs it again on the
    /// migrated file and fails (recording it again breaks the key of `grdb_migrations`), or its
    /// wait outlasts the busy timeout (a large file's rebuild). So when a run fails after another
    /// process recorded a migration, or while another process holds the write lock, the migrator
    /// runs again with a fresh list (for up to ten minutes); once the file records every
    /// migration it is ready, whoever migrated it.
    private static func migrate(_ database: any DatabaseWriter, logger: Logger) throws {
        let applied = try database.read { db in try migrator.appliedIdentifiers(db) }
        let deadline = ContinuousClock.now + .seconds(600)
        var listed = applied
        while true {
            do {
                try migrator.migrate(database)
                break
            } catch {
                let now = try database.read { db in try migrator.appliedIdentifiers(db) }
                if Set(migrator.migrations).isSubset(of: now) { break }
                let busy = (error as? DatabaseError)?.resultCode == .SQLITE_BUSY
                guard now != listed || busy, ContinuousClock.now < deadline else { throw error }
                listed = now
                // Each busy run waited the busy timeout already; with a timeout of zero, pause.
                if busy { Thread.sleep(forTimeInterval: 0.05) }
            }
        }
        let ran = try database.read { db in try migrator.appliedIdentifiers(db) }.subtracting(applied)
        if !ran.isEmpty {
            logger.info("migrated the SQLite event store", metadata: ["migrations": "\(ran.sorted())"])
        }
    }

    /// Closes the store: appends and reads fail with ``SQLiteStoreError/closed`` from now on, and
    /// the database closes if the store opened it (a database passed in stays open).
    ///
    /// - Throws: ``SQLiteStoreError`` when SQLite cannot close the file (a statement still runs).
    public func close() async throws {
        readiness.close()
        guard ownsDatabase else { return }
        do { try database.close() } catch { throw SQLiteStoreError.translate(error) }
    }

    // MARK: Schema

    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("backstage-v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE backstage_events (
                        position INTEGER PRIMARY KEY AUTOINCREMENT,
                        stream TEXT NOT NULL,
                        category TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        id BLOB NOT NULL UNIQUE,
                        type TEXT NOT NULL,
                        schema_version INTEGER NOT NULL,
                        data BLOB NOT NULL,
                        command_id BLOB,
                        causation_id BLOB,
                        correlation_id BLOB,
                        fields TEXT,
                        recorded_at REAL NOT NULL,
                        UNIQUE (stream, version)
                    );
                    CREATE INDEX backstage_events_type ON backstage_events (type, position);
                    CREATE INDEX backstage_events_category ON backstage_events (category, position);
                    CREATE TRIGGER backstage_events_no_update BEFORE UPDATE ON backstage_events
                    BEGIN SELECT RAISE(ABORT, 'backstage: events are immutable'); END;
                    CREATE TRIGGER backstage_events_no_delete BEFORE DELETE ON backstage_events
                    BEGIN SELECT RAISE(ABORT, 'backstage: events are immutable'); END;
                    CREATE TABLE backstage_commands (
                        command_id BLOB PRIMARY KEY,
                        stream TEXT NOT NULL,
                        first_version INTEGER NOT NULL,
                        last_version INTEGER NOT NULL,
                        first_position INTEGER NOT NULL,
                        last_position INTEGER NOT NULL,
                        fingerprint TEXT NOT NULL
                    ) WITHOUT ROWID;
                    CREATE TABLE backstage_snapshots (
                        stream TEXT PRIMARY KEY,
                        version INTEGER NOT NULL,
                        schema_version INTEGER NOT NULL,
                        data BLOB NOT NULL,
                        recorded_at REAL NOT NULL
                    ) WITHOUT ROWID;
                    """)
        }
        // Event data as JSON text (SQLite's JSON functions read it) instead of a blob: existing
        // events whose data is valid JSON become text with the same bytes; other data stays a blob.
        migrator.registerMigration("backstage-v2-json-text") { db in
            try db.execute(
                sql: """
                    DROP TRIGGER backstage_events_no_update;
                    UPDATE backstage_events SET data = CAST(data AS TEXT)
                    WHERE typeof(data) = 'blob' AND instr(data, X'00') = 0 AND json_valid(CAST(data AS TEXT));
                    CREATE TRIGGER backstage_events_no_update BEFORE UPDATE ON backstage_events
                    BEGIN SELECT RAISE(ABORT, 'backstage: events are immutable'); END;
                    """)
        }
        // Positions without AUTOINCREMENT. Events are never deleted (a trigger refuses it), so the
        // largest position + 1, which SQLite gives a new row, never repeats a position; and a
        // commit no longer writes the sqlite_sequence page beside the events', its indexes' and
        // the command's pages (a lone append got about a tenth faster on a synced disk; SQLite
        // writes each changed page to the WAL and syncs it). SQLite cannot drop AUTOINCREMENT in
        // place: the table is built again with every row, position and id kept, and its indexes
        // and triggers (the store's and any the application added) are created again.
        migrator.registerMigration("backstage-v3-positions") { db in
            let table =
                try String.fetchOne(
                    db, sql: "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'backstage_events'") ?? ""
            // Another process that opened the file at the same moment rebuilt it already.
            guard table.contains("AUTOINCREMENT") else { return }
            let attached = try String.fetchAll(
                db,
                sql: """
                    SELECT sql FROM sqlite_master
                    WHERE tbl_name = 'backstage_events' AND type IN ('index', 'trigger') AND sql IS NOT NULL
                    ORDER BY type, name
                    """)
            // The table as backstage-v1 created it, but for AUTOINCREMENT: the same columns in
            // the same order, so the rows copy as they are.
            let rebuilt =
                table
                .replacingOccurrences(of: "CREATE TABLE backstage_events (", with: "CREATE TABLE backstage_events_v3 (")
                .replacingOccurrences(of: "INTEGER PRIMARY KEY AUTOINCREMENT", with: "INTEGER PRIMARY KEY")
            guard rebuilt.contains("backstage_events_v3"), !rebuilt.contains("AUTOINCREMENT") else {
                throw SQLiteStoreError.unexpectedResult("the events table's definition is not the store's: \(table)")
            }
            try db.execute(
                sql: """
                    \(rebuilt);
                    INSERT INTO backstage_events_v3 SELECT * FROM backstage_events ORDER BY position;
                    DROP TABLE backstage_events;
                    """)
            // Legacy renaming leaves the application's views on the table alone (they name it,
            // and it exists again under that name); SQLite's newer renaming checks them against
            // the schema while the table is missing, and refuses.
            try db.execute(sql: "PRAGMA legacy_alter_table = ON")
            defer { try? db.execute(sql: "PRAGMA legacy_alter_table = OFF") }
            try db.execute(sql: "ALTER TABLE backstage_events_v3 RENAME TO backstage_events")
            for sql in attached { try db.execute(sql: sql) }
            try db.execute(sql: "DELETE FROM sqlite_sequence WHERE name = 'backstage_events'")
        }
        PipelineSchema.register(in: &migrator)
        return migrator
    }()

    // MARK: Appending (group commit)

    /// One append waiting in the write queue. Its fields other than the inputs are guarded by
    /// the queue's mutex.
    private final class PendingAppend: @unchecked Sendable {
        let events: [EventData]
        let stream: String
        let expected: ExpectedVersion
        let commandID: UUID?
        let fingerprint: String
        // Set by the writer, read after the transaction.
        var outcome: Result<AppendResult, any Error>?
        /// What the waiting caller does next, once decided: true = write the next group itself,
        /// false = its `outcome` is set.
        var turn: Bool?
        /// The suspended caller, when it suspended before its turn was decided.
        var waiter: CheckedContinuation<Bool, Never>?

        init(events: [EventData], stream: String, expected: ExpectedVersion, commandID: UUID?) {
            self.events = events
            self.stream = stream
            self.expected = expected
            self.commandID = commandID
            self.fingerprint = commandID == nil ? "" : appendFingerprint(events)
        }
    }

    private struct WriteQueue {
        var pending: Deque<PendingAppend> = []
        var writing = false
        /// Appends carried by the last transaction.
        var lastGroup = 0
        /// Transactions of one append in a row.
        var loneStreak = 0
        var statistics = Statistics()
    }

    /// Counters of the writer since the store was opened.
    public struct Statistics: Sendable, Hashable {
        /// Write transactions committed.
        public var transactions = 0
        /// Appends those transactions carried (successful or rejected).
        public var appends = 0
        /// Most appends carried by one transaction.
        public var largestGroup = 0
    }

    /// Counters of the writer since the store was opened: how well group commit is grouping.
    public var statistics: Statistics { queue.withLock { $0.statistics } }

    /// Appends through group commit, without a writer task: the caller that finds nobody writing
    /// writes the queued group itself (a lone append goes straight to GRDB's writer, with no
    /// writer task in between and no wait for company); callers that arrive meanwhile queue up,
    /// and when a transaction commits, the first of them writes the next group, which holds
    /// everything queued by then.
    public func append(
        _ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?
    ) async throws -> AppendResult {
        try limits.validate(append: events, to: stream)
        guard readiness.isReady else { throw SQLiteStoreError.closed }
        let start = ContinuousClock.now
        let item = PendingAppend(events: events, stream: stream, expected: expected, commandID: commandID)
        let leads = queue.withLock { q -> Bool in
            q.pending.append(item)
            if q.writing { return false }
            q.writing = true
            return true
        }
        if !leads {
            let writesNext = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let decided = queue.withLock { q -> Bool? in
                    if let turn = item.turn { return turn }
                    item.waiter = c
                    return nil
                }
                if let decided { c.resume(returning: decided) }
            }
            if !writesNext { return try finish(item, since: start) }
        }
        // When the last group had company, its callers are coming back with their next
        // appends: let the tasks ready to run go first, yielding while the queue grows (a few
        // times at most), so one group carries them all instead of two groups alternating, each
        // waiting for the other's commit. A lone caller does not wait for company: it yields
        // only once in a while (every 8th lone transaction), a cheap probe that finds company
        // when other tasks were ready but had no thread while the lone appends held one.
        let (hadCompany, probe, pendingNow) = queue.withLock { q in
            (q.lastGroup > 1, q.loneStreak % 8 == 7, q.pending.count)
        }
        if hadCompany || probe {
            var queued = pendingNow
            for _ in 0..<(hadCompany ? 8 : 1) {
                await Task.yield()
                let now = queue.withLock { $0.pending.count }
                if now == queued { break }
                queued = now
            }
        }
        let maxBatch = max(configuration.maxAppendsPerCommit, 1)
        let batch = queue.withLock { q -> [PendingAppend] in
            let n = min(q.pending.count, maxBatch)
            let batch = Array(q.pending.prefix(n))
            q.pending.removeFirst(n)
            return batch
        }
        var error: (any Error)?
        if batch.count == 1 {
            // A lone append runs on the caller's own thread (GRDB's synchronous writer access):
            // no hop to the writer queue and back, which costs a lone command more than the
            // transaction's own work. Nobody else waits for this transaction, and the other
            // threads keep running other tasks meanwhile.
            do {
                try writeOnThisThread(batch)
            } catch let e {
                error = e
            }
        } else {
            // A group runs on GRDB's writer queue, the hop shared by the whole group. The
            // continuation is not cancellable: a cancelled caller never fails the group it
            // writes for others.
            error = await withCheckedContinuation { (c: CheckedContinuation<(any Error)?, Never>) in
                database.asyncWriteWithoutTransaction { db in
                    do {
                        try Self.transaction(batch, in: db)
                        c.resume(returning: nil)
                    } catch {
                        c.resume(returning: error)
                    }
                }
            }
        }
        deliver(batch, error: error)
        return try finish(item, since: start)
    }

    /// Writes `appends` as one group-commit transaction, as the write queue does for appends
    /// that wait at the same moment, and returns each append's outcome, in order, and whether
    /// the group's multi-row inserts failed and it ran again one append at a time. For tests,
    /// which cannot make concurrent appends meet in one group deterministically.
    package func appendAsOneGroup(
        _ appends: [(events: [EventData], stream: String, expected: ExpectedVersion, commandID: UUID?)]
    ) async throws -> (outcomes: [Result<AppendResult, any Error>], redone: Bool) {
        guard readiness.isReady else { throw SQLiteStoreError.closed }
        for append in appends { try limits.validate(append: append.events, to: append.stream) }
        let batch = appends.map {
            PendingAppend(events: $0.events, stream: $0.stream, expected: $0.expected, commandID: $0.commandID)
        }
        let redone = try await translatingErrors {
            try await database.writeWithoutTransaction { db in try Self.transaction(batch, in: db) }
        }
        let outcomes = batch.map {
            ($0.outcome ?? .failure(SQLiteStoreError.unexpectedResult("an append was not written")))
                .mapError { SQLiteStoreError.translate($0) }
        }
        if outcomes.contains(where: { (try? $0.get())?.isDuplicate == false }) { notifier.notify() }
        return (outcomes, redone)
    }

    /// GRDB's synchronous writer access (this function is not `async`, so the synchronous
    /// overload is the one called).
    private func writeOnThisThread(_ batch: [PendingAppend]) throws {
        _ = try database.writeWithoutTransaction { db in try Self.transaction(batch, in: db) }
    }

    private func finish(_ item: PendingAppend, since start: ContinuousClock.Instant) throws -> AppendResult {
        switch item.outcome {
        case .success(let result)?:
            metrics.appended(events: item.events.count, since: start)
            return result
        case .failure(let error)?: throw error
        case nil: throw SQLiteStoreError.unexpectedResult("an append was not written")
        }
    }

    /// Writes a group in one transaction, each append checked on its own, so one conflict
    /// rejects only its own append.
    ///
    /// A group is first written with few statements (``writeGroup(_:in:)``: each append's
    /// checks, then multi-row inserts); when one of those inserts fails (a new stream that has
    /// events, an event id already stored), the transaction rolls back and the group runs again
    /// one append at a time, which finds the append at fault.
    ///
    /// One at a time, a rejected append usually wrote nothing (a version or idempotency conflict is found
    /// before its first insert), so a group runs without savepoints; in the rare case an append
    /// fails after inserting some of its events (a duplicate event id), the transaction rolls
    /// back and the group runs again with a savepoint per append.
    ///
    /// - Returns: whether the group's multi-row inserts failed and it ran one append at a time.
    @discardableResult
    private static func transaction(_ batch: [PendingAppend], in db: Database) throws -> Bool {
        if batch.count > 1 {
            do {
                try immediateTransaction(db) {
                    let outcomes = try writeGroup(batch, in: db)
                    for (item, outcome) in zip(batch, outcomes) { item.outcome = outcome }
                    return .commit
                }
                return false
            } catch is RedoSerially {
                // Rolled back: an insert failed; the appends run one by one below, each told
                // its own outcome.
            }
            do {
                try immediateTransaction(db) {
                    for item in batch {
                        let outcome = write(item, in: db)
                        if case .failure(let error) = outcome, error is PartialAppend { throw RedoWithSavepoints() }
                        item.outcome = outcome
                    }
                    return .commit
                }
                return true
            } catch is RedoWithSavepoints {
                // Rolled back: nothing of the group is stored; written again below.
            }
        }
        try immediateTransaction(db) {
            if batch.count == 1 {
                // A group of one needs no savepoint: a failed append rolls back the transaction.
                let outcome = write(batch[0], in: db)
                batch[0].outcome = outcome.mapError { ($0 as? PartialAppend)?.error ?? $0 }
                if case .failure = outcome { return .rollback }
            } else {
                for item in batch { item.outcome = writeInSavepoint(item, in: db) }
            }
            return .commit
        }
        return batch.count > 1
    }

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction, like GRDB's `inTransaction(.immediate)`,
    /// with cached statements for `BEGIN`, `COMMIT` and `ROLLBACK` (GRDB parses them again for
    /// every transaction, a cost a lone append notices).
    private static func immediateTransaction(
        _ db: Database, _ body: () throws -> Database.TransactionCompletion
    ) throws {
        try db.cachedStatement(sql: "BEGIN IMMEDIATE TRANSACTION").execute()
        let completion: Database.TransactionCompletion
        do {
            completion = try body()
        } catch {
            rollback(db)
            throw error
        }
        switch completion {
        case .commit:
            do {
                try db.cachedStatement(sql: "COMMIT TRANSACTION").execute()
            } catch {
                rollback(db)
                throw error
            }
        case .rollback:
            rollback(db)
        }
    }

    /// Rolls back the transaction, if SQLite has not already (after some errors it has).
    private static func rollback(_ db: Database) {
        guard db.isInsideTransaction else { return }
        do {
            try db.cachedStatement(sql: "ROLLBACK TRANSACTION").execute()
        } catch {
            // Still inside: GRDB's own rollback closes what holds the transaction open.
            try? db.rollback()
        }
    }

    /// An append that failed after inserting some of its events.
    private struct PartialAppend: Error {
        var error: any Error
    }

    private struct RedoWithSavepoints: Error {}

    /// A multi-row insert of a group failed: the group runs again one append at a time.
    private struct RedoSerially: Error {}

    /// Hands each waiting caller of `batch` its outcome, and the writer's turn to the first
    /// caller still queued, if any.
    private func deliver(_ batch: [PendingAppend], error: (any Error)?) {
        var wrote = false
        if let error {
            // The transaction did not commit: nothing of the group is stored.
            let translated = SQLiteStoreError.translate(error)
            for item in batch { item.outcome = .failure(translated) }
        } else {
            for item in batch {
                if case .success(let result)? = item.outcome {
                    wrote = wrote || !result.isDuplicate
                } else if case .failure(let error)? = item.outcome {
                    item.outcome = .failure(SQLiteStoreError.translate(error))
                }
            }
        }
        metrics.committed(appends: batch.count)
        // Outcomes first, then the next writer: every waiter is resumed exactly once.
        var resume: [CheckedContinuation<Bool, Never>] = []
        var next: CheckedContinuation<Bool, Never>?
        queue.withLock { q in
            q.statistics.transactions += 1
            q.statistics.appends += batch.count
            q.statistics.largestGroup = max(q.statistics.largestGroup, batch.count)
            q.lastGroup = batch.count
            q.loneStreak = batch.count == 1 ? q.loneStreak + 1 : 0
            for item in batch.dropFirst() {
                item.turn = false
                if let w = item.waiter { resume.append(w) }
                item.waiter = nil
            }
            if let first = q.pending.first {
                first.turn = true
                next = first.waiter
                first.waiter = nil
            } else {
                q.writing = false
            }
        }
        next?.resume(returning: true)
        for w in resume { w.resume(returning: false) }
        if wrote { notifier.notify() }
    }

    /// Writes one append of a group inside its own savepoint; a failure rolls back only this append.
    private static func writeInSavepoint(_ item: PendingAppend, in db: Database) -> Result<AppendResult, any Error> {
        do {
            try db.cachedStatement(sql: "SAVEPOINT backstage_append").execute()
            let outcome = write(item, in: db).mapError { ($0 as? PartialAppend)?.error ?? $0 }
            if case .failure = outcome {
                try db.cachedStatement(sql: "ROLLBACK TO SAVEPOINT backstage_append").execute()
            }
            try db.cachedStatement(sql: "RELEASE SAVEPOINT backstage_append").execute()
            return outcome
        } catch {
            return .failure(error)
        }
    }

    private static func write(_ item: PendingAppend, in db: Database) -> Result<AppendResult, any Error> {
        do {
            return .success(try insert(item, in: db))
        } catch {
            return .failure(error)
        }
    }

    private static func insert(_ item: PendingAppend, in db: Database) throws -> AppendResult {
        switch try check(item, in: db) {
        case .duplicate(let result):
            return result
        case .accepted(let actual):
            return try insertEvents(
                item, from: actual, category: streamCategory(item.stream), now: Date().timeIntervalSince1970, in: db)
        }
    }

    /// What an append's checks decided before anything of it is written.
    private enum Checked {
        /// Its command id is stored with the same events: the earlier append's result.
        case duplicate(AppendResult)
        /// To be written after version `actual` (for a new stream, 0 unread: its first insert is the check).
        case accepted(actual: Int64)
    }

    /// The checks of one append in the write transaction: its command id (an idempotency
    /// conflict throws), then its expected version (a conflict throws); a new stream's version
    /// is not read (see ``Checked/accepted(actual:)``).
    private static func check(_ item: PendingAppend, in db: Database) throws -> Checked {
        if let commandID = item.commandID {
            let lookup = SQLiteBinder(
                try db.cachedStatement(
                    sql: """
                        SELECT stream, first_version, last_version, first_position, last_position, fingerprint
                        FROM backstage_commands WHERE command_id = ?
                        """))
            lookup.bind(1, commandID)
            if let row = try Row.fetchOne(lookup.statement) {
                let stream: String = row[0]
                guard row[5] as String == item.fingerprint else {
                    throw EventStoreError.idempotencyConflict(commandID: commandID, stream: stream)
                }
                return .duplicate(
                    AppendResult(
                        stream: stream, firstVersion: row[1], lastVersion: row[2], firstPosition: row[3],
                        lastPosition: row[4], isDuplicate: true))
            }
        }
        switch item.expected {
        case .noStream, .exact(0):
            // A new stream: no read first. Its first event takes version 1, which the
            // (stream, version) key refuses when the stream has events; then it is a conflict.
            return .accepted(actual: 0)
        default:
            let actual = try streamVersion(item.stream, in: db)
            guard item.expected.accepts(actual) else {
                throw EventStoreError.wrongExpectedVersion(stream: item.stream, expected: item.expected, actual: actual)
            }
            return .accepted(actual: actual)
        }
    }

    /// An append of a group that passed its checks, its rows not inserted yet.
    private struct AcceptedAppend {
        /// Its place in the group.
        let index: Int
        let item: PendingAppend
        /// The stream's version its events follow.
        let actual: Int64
        /// The stream's category (computed once per append).
        let category: String
    }

    /// Most rows one multi-row INSERT of a group carries (12 parameters per event row: 768,
    /// under SQLite's historical limit of 999 parameters per statement).
    static let rowsPerInsert = 64

    /// `INSERT OR ROLLBACK INTO backstage_events ... VALUES (...), (...)` with `n` rows, for n
    /// in 1...64. `OR ROLLBACK`: a failed row ends the transaction, which the group then writes
    /// again one append at a time anyway; so SQLite need not keep a statement journal to undo
    /// the statement alone (with the default `ABORT`, that journal costs more than the
    /// multi-row statement saves).
    private static let eventInsertSQL: [String] = (0...rowsPerInsert).map { n in
        """
        INSERT OR ROLLBACK INTO backstage_events (stream, category, version, id, type, schema_version, data,
            command_id, causation_id, correlation_id, fields, recorded_at) VALUES
        """
            + Array(repeating: "(?,?,?,?,?,?,?,?,?,?,?,?)", count: n).joined(separator: ",")
    }

    /// `INSERT OR ROLLBACK INTO backstage_commands ... VALUES (...), (...)` with `n` rows, for n
    /// in 1...64 (`OR ROLLBACK` as for events).
    private static let commandInsertSQL: [String] = (0...rowsPerInsert).map { n in
        """
        INSERT OR ROLLBACK INTO backstage_commands (command_id, stream, first_version, last_version,
            first_position, last_position, fingerprint) VALUES
        """
            + Array(repeating: "(?,?,?,?,?,?,?)", count: n).joined(separator: ",")
    }

    /// Writes a group (more than one append) in the open transaction with few statements:
    /// each append's checks (command id, expected version; ``check(_:in:)``) as one at a
    /// time, then the events of the accepted appends with multi-row INSERTs of up to
    /// ``rowsPerInsert`` rows, and their command rows likewise.
    ///
    /// Appends are taken in runs of distinct streams and command ids, so that no check depends
    /// on a row of its own run that is not inserted yet: an append whose stream or command id
    /// is already in the run inserts the run first. A check that fails rejects its own append
    /// only. An insert that fails (a new stream that has events, an event id already stored,
    /// an I/O error) throws ``RedoSerially``: the caller rolls the transaction back and writes
    /// the group one append at a time (a failed row has already rolled the transaction back:
    /// the statements are `INSERT OR ROLLBACK`).
    ///
    /// - Returns: the outcome of every append of `batch`, in order.
    private static func writeGroup(_ batch: [PendingAppend], in db: Database) throws -> [Result<
        AppendResult, any Error
    >] {
        var outcomes = [Result<AppendResult, any Error>?](repeating: nil, count: batch.count)
        var run: [AcceptedAppend] = []
        run.reserveCapacity(batch.count)
        var streams = Set<String>()
        var commands = Set<UUID>()
        let now = Date().timeIntervalSince1970
        for (index, item) in batch.enumerated() {
            if streams.contains(item.stream) || item.commandID.map({ commands.contains($0) }) == true {
                try insertRun(run, now: now, into: &outcomes, in: db)
                run.removeAll(keepingCapacity: true)
                streams.removeAll(keepingCapacity: true)
                commands.removeAll(keepingCapacity: true)
            }
            do {
                switch try check(item, in: db) {
                case .duplicate(let result):
                    outcomes[index] = .success(result)
                case .accepted(let actual):
                    run.append(
                        AcceptedAppend(
                            index: index, item: item, actual: actual, category: streamCategory(item.stream)))
                    streams.insert(item.stream)
                    if let commandID = item.commandID { commands.insert(commandID) }
                }
            } catch {
                outcomes[index] = .failure(error)
            }
        }
        try insertRun(run, now: now, into: &outcomes, in: db)
        return outcomes.map { $0 ?? .failure(SQLiteStoreError.unexpectedResult("an append was not written")) }
    }

    /// Inserts the events of `run` with multi-row INSERTs, then the command rows of those that
    /// carry a command id, and sets their outcomes. Throws ``RedoSerially`` when a statement fails.
    private static func insertRun(
        _ run: [AcceptedAppend], now: TimeInterval, into outcomes: inout [Result<AppendResult, any Error>?],
        in db: Database
    ) throws {
        guard !run.isEmpty else { return }
        var remaining = run.reduce(0) { $0 + $1.item.events.count }
        var firstPositions = [Int64](repeating: 0, count: run.count)
        var lastPositions = [Int64](repeating: 0, count: run.count)
        // The next row to insert: event `e` of append `a` of the run.
        var a = 0
        var e = 0
        while remaining > 0 {
            let rows = min(remaining, rowsPerInsert)
            let (startA, startE) = (a, e)
            do {
                let binder = SQLiteBinder(try db.cachedStatement(sql: eventInsertSQL[rows]))
                for row in 0..<rows {
                    let accepted = run[a]
                    let event = accepted.item.events[e]
                    try bindEventRow(
                        binder, after: Int32(row * 12), stream: accepted.item.stream, category: accepted.category,
                        version: accepted.actual + Int64(e) + 1, event, now: now)
                    e += 1
                    if e == accepted.item.events.count { (a, e) = (a + 1, 0) }
                }
                try binder.statement.execute()
            } catch {
                throw RedoSerially()
            }
            // The rows of one INSERT take consecutive positions (one writer, each row the
            // largest position plus one), in the order of its VALUES.
            var position = db.lastInsertedRowID - Int64(rows) + 1
            var (pa, pe) = (startA, startE)
            for _ in 0..<rows {
                if pe == 0 { firstPositions[pa] = position }
                pe += 1
                if pe == run[pa].item.events.count {
                    lastPositions[pa] = position
                    (pa, pe) = (pa + 1, 0)
                }
                position += 1
            }
            remaining -= rows
        }
        let recordedAt = Date(timeIntervalSince1970: now)
        var results: [AppendResult] = []
        results.reserveCapacity(run.count)
        for (i, accepted) in run.enumerated() {
            results.append(
                AppendResult(
                    stream: accepted.item.stream, firstVersion: accepted.actual + 1,
                    lastVersion: accepted.actual + Int64(accepted.item.events.count), firstPosition: firstPositions[i],
                    lastPosition: lastPositions[i], recordedAt: recordedAt))
        }
        try insertCommandRows(run, results, in: db)
        for (accepted, result) in zip(run, results) { outcomes[accepted.index] = .success(result) }
    }

    /// The command rows of the appends of `run` that carry a command id, with multi-row INSERTs.
    /// Throws ``RedoSerially`` when a statement fails.
    private static func insertCommandRows(_ run: [AcceptedAppend], _ results: [AppendResult], in db: Database) throws {
        var pending = run.indices.filter { run[$0].item.commandID != nil }[...]
        while !pending.isEmpty {
            let chunk = pending.prefix(rowsPerInsert)
            pending = pending.dropFirst(chunk.count)
            do {
                let binder = SQLiteBinder(try db.cachedStatement(sql: commandInsertSQL[chunk.count]))
                for (row, i) in chunk.enumerated() {
                    bindCommandRow(binder, after: Int32(row * 7), run[i].item, results[i])
                }
                try binder.statement.execute()
            } catch {
                throw RedoSerially()
            }
        }
    }

    /// Binds one `backstage_events` row, parameters `base + 1` to `base + 12`, in the column order
    /// of the single-row and the multi-row inserts: stream, category, version, id, type,
    /// schema_version, data, command_id, causation_id, correlation_id, fields, recorded_at.
    private static func bindEventRow(
        _ binder: SQLiteBinder, after base: Int32, stream: String, category: String, version: Int64,
        _ event: EventData, now: TimeInterval
    ) throws {
        binder.bind(base + 1, stream)
        binder.bind(base + 2, category)
        binder.bind(base + 3, version)
        binder.bind(base + 4, event.id)
        binder.bind(base + 5, event.type)
        binder.bind(base + 6, Int64(event.schemaVersion))
        binder.bindStoredData(base + 7, event.data)
        binder.bind(base + 8, event.metadata.commandID)
        binder.bind(base + 9, event.metadata.causationID)
        binder.bind(base + 10, event.metadata.correlationID)
        binder.bind(base + 11, try encodedFields(event.metadata.fields))
        binder.bind(base + 12, now)
    }

    /// Binds one `backstage_commands` row of `item` (stored as `result`), parameters `base + 1`
    /// to `base + 7`: command_id, stream, first_version, last_version, first_position,
    /// last_position, fingerprint.
    private static func bindCommandRow(
        _ binder: SQLiteBinder, after base: Int32, _ item: PendingAppend, _ result: AppendResult
    ) {
        binder.bind(base + 1, item.commandID)
        binder.bind(base + 2, item.stream)
        binder.bind(base + 3, result.firstVersion)
        binder.bind(base + 4, result.lastVersion)
        binder.bind(base + 5, result.firstPosition)
        binder.bind(base + 6, result.lastPosition)
        binder.bind(base + 7, item.fingerprint)
    }

    /// The stored form of metadata fields: nil when there are none, else JSON with sorted keys.
    private static func encodedFields(_ fields: [String: String]) throws -> String? {
        fields.isEmpty ? nil : String(decoding: try fieldsEncoder.encode(fields), as: UTF8.self)
    }

    /// The version of `stream` in the write transaction.
    private static func streamVersion(_ stream: String, in db: Database) throws -> Int64 {
        let query = SQLiteBinder(
            try db.cachedStatement(sql: "SELECT MAX(version) FROM backstage_events WHERE stream = ?"))
        query.bind(1, stream)
        return try Int64.fetchOne(query.statement) ?? 0
    }

    /// Inserts the events (and the command row) of an append that passed its checks (for a new
    /// stream, the first insert is the check). Throws ``PartialAppend`` when it fails after
    /// inserting some events.
    private static func insertEvents(
        _ item: PendingAppend, from actual: Int64, category: String, now: TimeInterval, in db: Database
    ) throws -> AppendResult {
        let insert = try db.cachedStatement(
            sql: """
                INSERT INTO backstage_events (stream, category, version, id, type, schema_version, data,
                    command_id, causation_id, correlation_id, fields, recorded_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
        var version = actual
        var firstPosition: Int64 = 0
        for event in item.events {
            version += 1
            do {
                try bindEventRow(
                    SQLiteBinder(insert), after: 0, stream: item.stream, category: category, version: version, event,
                    now: now)
                try insert.execute()
            } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
                if firstPosition == 0 {
                    // Nothing of this append is stored: the stream moved (a new stream's first
                    // event), or an event id is taken.
                    let stored = try streamVersion(item.stream, in: db)
                    if stored != actual {
                        throw EventStoreError.wrongExpectedVersion(
                            stream: item.stream, expected: item.expected, actual: stored)
                    }
                    throw EventStoreError.invalidInput("event id \(event.id) is already stored")
                }
                throw PartialAppend(error: EventStoreError.invalidInput("event id \(event.id) is already stored"))
            } catch let error as EventStoreError {
                throw error
            } catch {
                // Another failure (I/O, a full disk) may have rolled back the transaction: the
                // group runs again, each append in its own savepoint.
                throw PartialAppend(error: error)
            }
            if firstPosition == 0 { firstPosition = db.lastInsertedRowID }
        }
        let result = AppendResult(
            stream: item.stream, firstVersion: actual + 1, lastVersion: version, firstPosition: firstPosition,
            lastPosition: db.lastInsertedRowID, recordedAt: Date(timeIntervalSince1970: now))
        if item.commandID != nil {
            do {
                let row = SQLiteBinder(
                    try db.cachedStatement(
                        sql: """
                            INSERT INTO backstage_commands (command_id, stream, first_version, last_version,
                                first_position, last_position, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)
                            """))
                bindCommandRow(row, after: 0, item, result)
                try row.statement.execute()
            } catch {
                throw PartialAppend(error: error)
            }
        }
        return result
    }

    /// Encodes metadata fields (sorted keys: the same bytes every time).
    private static var fieldsEncoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return encoder
    }

    /// The stored form of an event's data: JSON text (so SQLite's JSON functions read it, as in
    /// `json_extract(data, '$.showID')`) when it is UTF-8 without NUL bytes, as every JSON
    /// document is; a blob otherwise, so any bytes read back identical.
    static func storedData(_ data: Data) -> any DatabaseValueConvertible {
        let isText = data.withUnsafeBytes { isStoredAsText($0) }
        return isText ? String(decoding: data, as: UTF8.self) : data
    }

    /// Whether event data is stored as text: UTF-8 without NUL bytes (see ``storedData(_:)``).
    static func isStoredAsText(_ raw: UnsafeRawBufferPointer) -> Bool {
        let bytes = raw.bindMemory(to: UInt8.self)
        if bytes.contains(0) { return false }
        // Pure ASCII, the usual case, is UTF-8; otherwise validate.
        if !bytes.contains(where: { $0 >= 0x80 }) { return true }
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    // MARK: Reading

    private static let columns = """
        position, stream, version, id, type, schema_version, data, command_id, causation_id,
        correlation_id, fields, recorded_at
        """

    private static func event(_ row: Row) throws -> RecordedEvent {
        let fieldsJSON: String? = row[10]
        let fields =
            try fieldsJSON.map { try JSONDecoder().decode([String: String].self, from: Data($0.utf8)) } ?? [:]
        return RecordedEvent(
            position: row[0], stream: row[1], streamVersion: row[2], id: row[3], type: row[4],
            schemaVersion: row[5], data: row[6],
            metadata: EventMetadata(commandID: row[7], causationID: row[8], correlationID: row[9], fields: fields),
            recordedAt: Date(timeIntervalSince1970: row[11]))
    }

    public func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws -> [RecordedEvent] {
        try limits.validate(stream: stream)
        try limits.validate(pageSize: limit)
        let sql =
            switch direction {
            case .forward:
                "SELECT \(Self.columns) FROM backstage_events WHERE stream = ? AND version >= ? ORDER BY version LIMIT ?"
            case .backward:
                "SELECT \(Self.columns) FROM backstage_events WHERE stream = ? AND version <= ? ORDER BY version DESC LIMIT ?"
            }
        return try await translatingErrors {
            try await database.read { db in
                let rows = try Row.fetchCursor(db.cachedStatement(sql: sql), arguments: [stream, version, limit])
                return try Array(rows.map(Self.event))
            }
        }
    }

    public func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws
        -> [RecordedEvent]
    {
        try limits.validate(pageSize: limit)
        var sql = "SELECT \(Self.columns) FROM backstage_events WHERE position > ?"
        var arguments: StatementArguments = [position.position]
        if let types = filter.types {
            sql += " AND type IN (\(Array(repeating: "?", count: types.count).joined(separator: ",")))"
            arguments += StatementArguments(types.sorted())
        }
        if let categories = filter.categories {
            sql += " AND category IN (\(Array(repeating: "?", count: categories.count).joined(separator: ",")))"
            arguments += StatementArguments(categories.sorted())
        }
        sql += " ORDER BY position LIMIT ?"
        arguments += [limit]
        let query = sql
        let bound = arguments
        return try await translatingErrors {
            try await database.read { db in
                try Array(Row.fetchCursor(db.cachedStatement(sql: query), arguments: bound).map(Self.event))
            }
        }
    }

    public func streamVersion(_ stream: String) async throws -> Int64 {
        try limits.validate(stream: stream)
        return try await translatingErrors {
            try await database.read { db in
                try Int64.fetchOne(
                    db.cachedStatement(sql: "SELECT MAX(version) FROM backstage_events WHERE stream = ?"),
                    arguments: [stream]) ?? 0
            }
        }
    }

    public func headPosition() async throws -> LogPosition {
        try await translatingErrors { try await headPositionUntranslated() }
    }

    private func headPositionUntranslated() async throws -> LogPosition {
        try await database.read { db in
            LogPosition(position: try Int64.fetchOne(db, sql: "SELECT MAX(position) FROM backstage_events") ?? 0)
        }
    }

    public func appendResult(forCommand commandID: UUID) async throws -> AppendResult? {
        try await translatingErrors { try await appendResultUntranslated(commandID) }
    }

    private func appendResultUntranslated(_ commandID: UUID) async throws -> AppendResult? {
        try await database.read { db in
            guard
                let row = try Row.fetchOne(
                    db.cachedStatement(
                        sql: """
                            SELECT stream, first_version, last_version, first_position, last_position
                            FROM backstage_commands WHERE command_id = ?
                            """), arguments: [commandID])
            else { return nil }
            return AppendResult(
                stream: row[0], firstVersion: row[1], lastVersion: row[2], firstPosition: row[3],
                lastPosition: row[4], isDuplicate: true)
        }
    }

    // MARK: Snapshots

    public func saveSnapshot(_ snapshot: Snapshot) async throws {
        try limits.validate(stream: snapshot.stream)
        try await translatingErrors { try await saveSnapshotUntranslated(snapshot) }
    }

    private func saveSnapshotUntranslated(_ snapshot: Snapshot) async throws {
        try await database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO backstage_snapshots (stream, version, schema_version, data, recorded_at)
                    VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (stream) DO UPDATE SET version = excluded.version,
                        schema_version = excluded.schema_version, data = excluded.data,
                        recorded_at = excluded.recorded_at
                    WHERE excluded.version >= backstage_snapshots.version
                        OR excluded.schema_version != backstage_snapshots.schema_version
                    """,
                arguments: [
                    snapshot.stream, snapshot.version, snapshot.schemaVersion, snapshot.data,
                    snapshot.recordedAt.timeIntervalSince1970,
                ])
        }
    }

    public func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        try await translatingErrors { try await loadSnapshotUntranslated(stream, schemaVersion: schemaVersion) }
    }

    private func loadSnapshotUntranslated(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        try await database.read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT version, data, recorded_at FROM backstage_snapshots
                        WHERE stream = ? AND schema_version = ?
                        """, arguments: [stream, schemaVersion])
            else { return nil }
            return Snapshot(
                stream: stream, version: row[0], schemaVersion: schemaVersion, data: row[1],
                recordedAt: Date(timeIntervalSince1970: row[2]))
        }
    }

    public func appendNotifications() -> AsyncStream<Void> { notifier.stream() }
}

/// The store metrics of ``SQLiteEventStore`` (swift-metrics), named as for every store:
/// `backstage.store.append.duration` (Timer), `backstage.store.append.events` (events per
/// append) and `backstage.store.commit.appends` (appends per transaction: the group-commit size),
/// each with the dimension `store=sqlite`.
struct SQLiteStoreMetrics: Sendable {
    let duration = Metrics.Timer(label: "backstage.store.append.duration", dimensions: [("store", "sqlite")])
    let events = Recorder(label: "backstage.store.append.events", dimensions: [("store", "sqlite")])
    let appends = Recorder(label: "backstage.store.commit.appends", dimensions: [("store", "sqlite")])

    func appended(events count: Int, since start: ContinuousClock.Instant) {
        duration.record(duration: ContinuousClock.now - start)
        events.record(count)
    }

    func committed(appends count: Int) { appends.record(count) }
}

extension SQLiteEventStore: Service {
    /// Runs until graceful shutdown, cancellation or ``close()``, then closes the store (after
    /// the services listed after it in a `ServiceGroup`, which stop first). The store works
    /// without it: ``run()`` only ties its closing to the application's lifecycle.
    ///
    /// - Throws: ``SQLiteStoreError/closed`` when the store is already closed; what ``close()`` throws.
    public func run() async throws {
        guard readiness.isReady else { throw SQLiteStoreError.closed }
        await withGracefulShutdownHandler {
            await readiness.stopRequested.wait()
        } onGracefulShutdown: {
            self.readiness.stopRequested.signal()
        }
        try await close()
    }

    /// Runs `body` with `store`, then closes it (also when `body` throws). For scripts and tests.
    public static func withStore<Result: Sendable>(
        _ store: SQLiteEventStore, _ body: (SQLiteEventStore) async throws -> Result
    ) async throws -> Result {
        let outcome: Swift.Result<Result, any Error>
        do { outcome = .success(try await body(store)) } catch { outcome = .failure(error) }
        do {
            try await store.close()
        } catch {
            if case .success = outcome { throw error }
        }
        return try outcome.get()
    }

    /// Opens the store at `path`, runs `body` with it, then closes it: ``withStore(_:_:)`` for a path.
    public static func withStore<Result: Sendable>(
        path: String, configuration: Configuration = Configuration(),
        _ body: (SQLiteEventStore) async throws -> Result
    ) async throws -> Result {
        try await withStore(try SQLiteEventStore(path: path, configuration: configuration), body)
    }
}
