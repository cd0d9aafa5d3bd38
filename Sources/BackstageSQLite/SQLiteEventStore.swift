import Backstage
import DequeModule
import Foundation
import GRDB
import Logging
import ServiceLifecycle
import Synchronization

/// Errors of the SQLite backend (event store errors are ``EventStoreError``): what SQLite or
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
/// - One writer at a time (`BEGIN IMMEDIATE`), so positions (an `AUTOINCREMENT` key) are committed
///   in order and a reader that resumes after a position never misses an event.
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
/// GRDB does). It is also a swift-service-lifecycle `Service`, like ``PostgresEventStore``: in an
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
    /// Checkpoints, parked events and lease leadership in this file (``SQLiteCheckpointStore``,
    /// ``SQLiteParkedEventStore``, ``SQLiteLeadership``), shared by every ``PipelineService`` over
    /// this store that is not given others.
    public let pipelineDefaults: PipelineDefaults
    let configuration: Configuration
    let logger: Logger
    /// Whether ``close()`` closes ``database`` (the store opened it).
    private let ownsDatabase: Bool
    private let readiness = ServiceReadiness(closedError: SQLiteStoreError.closed)
    private let notifier = AppendNotifier()
    private let queue = Mutex(WriteQueue())

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
    private static func migrate(_ database: any DatabaseWriter, logger: Logger) throws {
        let applied = try database.read { db in try migrator.appliedIdentifiers(db) }
        try migrator.migrate(database)
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
        PipelineSchema.register(in: &migrator)
        return migrator
    }()

    // MARK: Appending (group commit)

    private final class PendingAppend: @unchecked Sendable {
        let events: [EventData]
        let stream: String
        let expected: ExpectedVersion
        let commandID: UUID?
        let fingerprint: String
        let continuation: CheckedContinuation<AppendResult, any Error>
        // Set by the writer, read after the transaction.
        var outcome: Result<AppendResult, any Error>?

        init(
            events: [EventData], stream: String, expected: ExpectedVersion, commandID: UUID?,
            continuation: CheckedContinuation<AppendResult, any Error>
        ) {
            self.events = events
            self.stream = stream
            self.expected = expected
            self.commandID = commandID
            self.fingerprint = commandID == nil ? "" : appendFingerprint(events)
            self.continuation = continuation
        }
    }

    private struct WriteQueue {
        var pending: Deque<PendingAppend> = []
        var writing = false
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

    public func append(
        _ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?
    ) async throws -> AppendResult {
        try limits.validate(append: events, to: stream)
        guard readiness.isReady else { throw SQLiteStoreError.closed }
        return try await withCheckedThrowingContinuation { continuation in
            let item = PendingAppend(
                events: events, stream: stream, expected: expected, commandID: commandID,
                continuation: continuation)
            let startWriter = queue.withLock { q in
                q.pending.append(item)
                if q.writing { return false }
                q.writing = true
                return true
            }
            if startWriter { Task { await self.drain() } }
        }
    }

    /// Writes queued appends, a group per transaction, until the queue is empty.
    private func drain() async {
        let maxBatch = max(configuration.maxAppendsPerCommit, 1)
        while true {
            let batch = queue.withLock { q -> [PendingAppend] in
                if q.pending.isEmpty {
                    q.writing = false
                    return []
                }
                let n = min(q.pending.count, maxBatch)
                let batch = Array(q.pending.prefix(n))
                q.pending.removeFirst(n)
                return batch
            }
            if batch.isEmpty { return }
            do {
                try await database.writeWithoutTransaction { db in
                    try db.inTransaction(.immediate) {
                        for item in batch { item.outcome = Self.write(item, in: db) }
                        return .commit
                    }
                }
                queue.withLock { q in
                    q.statistics.transactions += 1
                    q.statistics.appends += batch.count
                    q.statistics.largestGroup = max(q.statistics.largestGroup, batch.count)
                }
                var wrote = false
                for item in batch {
                    switch item.outcome {
                    case .success(let result)?:
                        wrote = wrote || !result.isDuplicate
                        item.continuation.resume(returning: result)
                    case .failure(let error)?:
                        item.continuation.resume(throwing: SQLiteStoreError.translate(error))
                    case nil:
                        item.continuation.resume(throwing: CancellationError())
                    }
                }
                if wrote { notifier.notify() }
            } catch {
                // The transaction did not commit: nothing of the batch is stored.
                let translated = SQLiteStoreError.translate(error)
                for item in batch { item.continuation.resume(throwing: translated) }
            }
        }
    }

    /// Writes one append inside its own savepoint; a failure rolls back only this append.
    private static func write(_ item: PendingAppend, in db: Database) -> Result<AppendResult, any Error> {
        do {
            try db.execute(sql: "SAVEPOINT backstage_append")
            do {
                let result = try insert(item, in: db)
                try db.execute(sql: "RELEASE SAVEPOINT backstage_append")
                return .success(result)
            } catch {
                try db.execute(sql: "ROLLBACK TO SAVEPOINT backstage_append")
                try db.execute(sql: "RELEASE SAVEPOINT backstage_append")
                return .failure(error)
            }
        } catch {
            return .failure(error)
        }
    }

    private static func insert(_ item: PendingAppend, in db: Database) throws -> AppendResult {
        if let commandID = item.commandID,
            let row = try Row.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT stream, first_version, last_version, first_position, last_position, fingerprint
                        FROM backstage_commands WHERE command_id = ?
                        """), arguments: [commandID])
        {
            let stream: String = row[0]
            guard row[5] as String == item.fingerprint else {
                throw EventStoreError.idempotencyConflict(commandID: commandID, stream: stream)
            }
            return AppendResult(
                stream: stream, firstVersion: row[1], lastVersion: row[2], firstPosition: row[3],
                lastPosition: row[4], isDuplicate: true)
        }
        let actual =
            try Int64.fetchOne(
                db.cachedStatement(sql: "SELECT MAX(version) FROM backstage_events WHERE stream = ?"),
                arguments: [item.stream]) ?? 0
        guard item.expected.accepts(actual) else {
            throw EventStoreError.wrongExpectedVersion(stream: item.stream, expected: item.expected, actual: actual)
        }
        let insert = try db.cachedStatement(
            sql: """
                INSERT INTO backstage_events (stream, category, version, id, type, schema_version, data,
                    command_id, causation_id, correlation_id, fields, recorded_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
        let category = streamCategory(item.stream)
        let now = Date().timeIntervalSince1970
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var version = actual
        var firstPosition: Int64 = 0
        for event in item.events {
            version += 1
            let fields: String? =
                event.metadata.fields.isEmpty
                ? nil : String(decoding: try encoder.encode(event.metadata.fields), as: UTF8.self)
            do {
                try insert.execute(arguments: [
                    item.stream, category, version, event.id, event.type, event.schemaVersion, event.data,
                    event.metadata.commandID, event.metadata.causationID, event.metadata.correlationID,
                    fields, now,
                ])
            } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
                throw EventStoreError.invalidInput("event id \(event.id) is already stored")
            }
            if firstPosition == 0 { firstPosition = db.lastInsertedRowID }
        }
        let result = AppendResult(
            stream: item.stream, firstVersion: actual + 1, lastVersion: version, firstPosition: firstPosition,
            lastPosition: db.lastInsertedRowID, recordedAt: Date(timeIntervalSince1970: now))
        if let commandID = item.commandID {
            try db.cachedStatement(
                sql: """
                    INSERT INTO backstage_commands (command_id, stream, first_version, last_version,
                        first_position, last_position, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                commandID, item.stream, result.firstVersion, result.lastVersion, result.firstPosition,
                result.lastPosition, item.fingerprint,
            ])
        }
        return result
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
