import Backstage
import Foundation
import Logging
import PostgresNIO
import Synchronization
import _ConnectionPoolModule

/// The event store for several application processes sharing one PostgreSQL database.
///
/// - **Parallel writers, global order without a global lock**: each append is one transaction
///   that locks only its own stream (a transaction-scoped advisory lock taken before anything
///   assigns the transaction an id, then the stream's row for the expected-version check), so
///   one stream's appends get increasing transaction ids. Every event row stores its
///   writing transaction's id (`xid8`). Readers of the global log only take rows below the
///   *read horizon*, ordered by (transaction id, position); a ``LogPosition`` holds that pair.
///   An append that commits late therefore holds readers back instead of being skipped; there
///   is no timeout-based gap skipping.
/// - **The read horizon waits only for appends**: every append transaction first takes, before
///   it has a transaction id, a shared transaction-scoped advisory lock of the schema (the
///   *appender lock*). A reader computes the horizon in one statement, then reads the events
///   below it in a second statement (each statement of a READ COMMITTED session takes its own
///   snapshot): horizon = the least of the `xmax` of the first statement's snapshot and the
///   transaction ids of the sessions holding the appender lock. So a transaction that appends
///   nothing (in this database or any other database of the cluster) never holds readers back.
///   Why nothing is skipped: an append whose id is below the horizon got its id before that
///   snapshot (ids below `xmax` are assigned before it), so it held the appender lock since before
///   the first statement; had it still been running during the second statement, the first would
///   have seen it in `pg_locks`, with its id in `pg_stat_activity`, and the horizon would be at
///   most its id. A session seen holding the lock without an id gets one at or above that `xmax`.
///   PostgreSQL leaves the list of running transactions before it releases locks, so an append
///   gone from `pg_locks` is visible as finished to the second statement. Both statements must
///   stay separate: in one statement, a commit between its snapshot and its look at `pg_locks`
///   would be missed. An append transaction left open (a hung process, a debugger) still holds
///   every reader back: ``readHorizon()`` shows the oldest running append and its age, for
///   status pages and alerts.
/// - **Moving a store to another cluster**: transaction ids are those of the cluster. A
///   physical copy (base backup, replica, `pg_upgrade`) keeps them. After `pg_dump`/`pg_restore`
///   into another cluster, the stored ids can be at or above the new cluster's counter, and new
///   events would sort below stored events and checkpoints; the store detects this when it opens
///   (and in ``migrate()``) and refuses with ``PostgresStoreError/transactionIDsAhead(schema:storedMaximum:clusterNext:)``.
///   The supported migration: restore, stop the new server, run
///   `pg_resetwal -e <epoch> -D <data directory>` with `epoch` at least
///   `(SELECT max(transaction_id)::text::numeric FROM <schema>.events) / 2^32 + 1` (the error
///   message gives the number; the epoch is only the high half of 64-bit transaction ids and
///   nothing else in the database depends on it), and start it again. Ids are never rewritten.
/// - **No group commit in the store**: appends run in parallel transactions, and PostgreSQL
///   already flushes the WAL of commits that wait at the same moment together.
/// - **Notifications**: every append sends `NOTIFY` in its transaction; ``appendNotifications()``
///   listens on a dedicated connection that reconnects and listens again when it is lost.
///   Notifications are hints: readers still poll.
/// - **Immutable events**: a trigger rejects `UPDATE`, `DELETE` and `TRUNCATE` on the events table.
/// - The schema (name configurable, checked against an allowlist) is created by migrations.
///
/// ## Lifecycle
///
/// The store is a swift-service-lifecycle `Service`, like postgres-nio's `PostgresClient`:
/// creating it does no I/O, and ``run()`` runs what it owns (the connection pool it created, the
/// notification listener), migrates the schema first, and returns on graceful shutdown,
/// cancellation or ``close()``. Operations wait until the schema is ready. An application runs it
/// in its `ServiceGroup`, before the services that use it (they shut down first):
///
/// ```swift
/// let store = try PostgresEventStore(url: "postgres://app:secret@127.0.0.1:5432/app")
/// let pipelines = try PipelineService(app: BackstageApp(store: store), projections: [...])
/// let group = ServiceGroup(
///     services: [store, pipelines, httpServer], gracefulShutdownSignals: [.sigterm], logger: logger)
/// try await group.run()
/// ```
///
/// Scripts and tests use the scoped form, which runs the store around a closure:
///
/// ```swift
/// try await PostgresEventStore.withStore(url: url) { store in
///     _ = try await store.append(events, to: "order-1", expected: .noStream, commandID: nil)
/// }
/// ```
public final class PostgresEventStore: EventStore {
    /// Settings of the store.
    public struct Configuration: Sendable {
        /// The schema holding the store's tables; checked against `^[a-z_][a-z0-9_]{0,62}$`.
        public var schema: String = "backstage"
        /// Limits that reject bad input before it reaches the database.
        public var limits = StoreLimits()
        /// Most connections of the pool the store creates (ignored when you pass a client).
        public var maximumConnections = 20
        /// Whether to run the schema migrations when the store opens.
        public var migrate = true
        /// First delay before the notification listener reconnects; it doubles up to 2 seconds.
        public var listenerReconnectDelay: Duration = .milliseconds(50)
        /// Where the store logs connection problems.
        public var logger = Logger(label: "backstage.postgres")

        /// The defaults.
        public init() {}
    }

    /// The connection pool.
    public let client: PostgresClient
    /// The schema holding the store's tables.
    public let schema: PostgresSchemaName
    /// The limits this store enforces.
    public let limits: StoreLimits
    /// The channel the store's appends notify.
    package let notificationChannel: String

    let configuration: Configuration
    let logger: Logger
    let queryLogger: Logger
    private let notifier = AppendNotifier()
    /// The pool this store created and runs in ``run()``; nil when the caller runs the client.
    let ownedClient: PostgresClient?
    let listener: NotificationListener
    let readiness = ServiceReadiness(closedError: PostgresStoreError.closed)

    /// A store at `url` (`postgres://user:password@host:port/database`), with a connection pool
    /// of its own that ``run()`` runs. Nothing connects until ``run()`` runs.
    ///
    /// - Throws: ``PostgresStoreError`` for an invalid URL or schema name.
    public convenience init(url: String, configuration: Configuration = Configuration()) throws {
        let settings = try PostgresConnectionSettings(url: url)
        try self.init(settings: settings, configuration: configuration)
    }

    /// A store with `settings`, with a connection pool of its own that ``run()`` runs. Nothing
    /// connects until ``run()`` runs.
    ///
    /// - Throws: ``PostgresStoreError/invalidSchemaName(_:)`` for an invalid schema name.
    public convenience init(settings: PostgresConnectionSettings, configuration: Configuration = Configuration())
        throws
    {
        let client = PostgresClient(
            configuration: settings.clientConfiguration(maximumConnections: configuration.maximumConnections))
        try self.init(client: client, owned: true, configuration: configuration)
    }

    /// A store on `client`, a pool that the caller runs (`client.run()`, for example in the same
    /// `ServiceGroup`, before the store). ``run()`` still has to run: it migrates the schema
    /// (unless the configuration says otherwise) and runs the notification listener.
    ///
    /// - Throws: ``PostgresStoreError/invalidSchemaName(_:)`` for an invalid schema name.
    public convenience init(client: PostgresClient, configuration: Configuration = Configuration()) throws {
        try self.init(client: client, owned: false, configuration: configuration)
    }

    private init(client: PostgresClient, owned: Bool, configuration: Configuration) throws {
        let schema = try PostgresSchemaName(configuration.schema)
        self.client = client
        self.ownedClient = owned ? client : nil
        self.schema = schema
        self.limits = configuration.limits
        self.configuration = configuration
        self.logger = configuration.logger
        self.queryLogger = Logger(label: "backstage.postgres.query", factory: { _ in SwiftLogNoOpLogHandler() })
        self.notificationChannel = String("backstage_\(schema.rawValue)".prefix(63))
        self.listener = NotificationListener(
            client: client, channel: notificationChannel, notifier: notifier,
            applicationName: "backstage-listener:\(schema.rawValue)",
            initialDelay: configuration.listenerReconnectDelay, logger: configuration.logger)
    }

    /// Migrates the schema (or, with ``Configuration/migrate`` off, checks it): the first step of ``run()``.
    func prepare() async throws {
        try await withPooledConnection { conn in
            if configuration.migrate {
                _ = try await PostgresMigrations.migrate(self.schema, on: conn, logger: self.queryLogger)
            }
            try await self.checkTransactionCounter(on: conn)
        }
    }

    /// Runs the schema migrations that have not run yet; returns their versions. Several
    /// processes may call it at the same time.
    ///
    /// - Throws: ``PostgresStoreError/transactionIDsAhead(schema:storedMaximum:clusterNext:)`` when
    ///   the schema was restored into a cluster whose transaction counter is behind its ids.
    @discardableResult
    public func migrate() async throws -> [Int] {
        try await withPooledConnection { conn in
            let ran = try await PostgresMigrations.migrate(self.schema, on: conn, logger: self.queryLogger)
            try await self.checkTransactionCounter(on: conn)
            return ran
        }
    }

    /// Refuses a schema whose stored transaction ids are not below this cluster's counter (a
    /// `pg_dump` restored into another cluster): see "Moving a store to another cluster" above.
    private func checkTransactionCounter(on conn: PostgresConnection) async throws {
        // A committed row's id is below the xmax of any later snapshot; reading the snapshot
        // does not assign this session a transaction id.
        var tables: [String] = []
        let existing = try await conn.query(
            """
            SELECT to_regclass(\(s + ".events")) IS NOT NULL, to_regclass(\(s + ".checkpoints")) IS NOT NULL
            """, logger: queryLogger)
        for try await (events, checkpoints) in existing.decode((Bool, Bool).self) {
            if events { tables.append("events") }
            if checkpoints { tables.append("checkpoints") }
        }
        guard !tables.isEmpty else { return }
        let maxima = tables.map { "(SELECT max(transaction_id) FROM \(s).\($0))" }.joined(separator: ", ")
        let rows = try await conn.query(
            PostgresQuery(
                unsafeSQL: """
                    SELECT greatest(\(maxima))::text, pg_snapshot_xmax(pg_current_snapshot())::text
                    """), logger: queryLogger)
        for try await (stored, next) in rows.decode((String?, String).self) {
            guard let stored else { return }
            let storedMaximum = try Self.parseTransaction(stored)
            let clusterNext = try Self.parseTransaction(next)
            if storedMaximum >= clusterNext {
                throw PostgresStoreError.transactionIDsAhead(
                    schema: s, storedMaximum: storedMaximum, clusterNext: clusterNext)
            }
        }
    }

    var s: String { schema.rawValue }
    /// The first key of the per-stream advisory locks (the second is the stream's hash).
    var streamLockClass: String { "backstage.stream.\(schema.rawValue)" }
    /// The first key of the appender lock (the second is 0): every append transaction holds it,
    /// shared, from its first statement; the read horizon waits for its holders only.
    var appenderLockClass: String { "backstage.appenders.\(schema.rawValue)" }

    // MARK: Appending

    /// What the append transaction is doing, for tests that need to act inside it.
    package enum AppendStage: Sendable {
        /// The events are inserted but not committed; the transaction has this id.
        case inserted(transaction: UInt64)
    }

    public func append(
        _ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?
    ) async throws -> AppendResult {
        try await append(events, to: stream, expected: expected, commandID: commandID, hook: nil)
    }

    /// Appends like ``append(_:to:expected:commandID:)``, calling `hook` inside the transaction
    /// before it commits: a hook that throws rolls the append back, one that waits holds the
    /// transaction open. For tests of the ordering guarantees.
    package func append(
        _ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?,
        hook: (@Sendable (AppendStage) async throws -> Void)?
    ) async throws -> AppendResult {
        try limits.validate(append: events, to: stream)
        try await readiness.waitUntilReady()
        let rows = try events.map { try EncodedEvent($0) }
        let fingerprint = commandID == nil ? "" : appendFingerprint(events)
        var attempt = 0
        while true {
            attempt += 1
            do {
                let result = try await client.withConnection { conn in
                    try await PostgresTransaction.run(on: conn, logger: queryLogger) { conn in
                        try await self.appendInTransaction(
                            rows, to: stream, expected: expected, commandID: commandID,
                            fingerprint: fingerprint, hook: hook, on: conn)
                    }
                }
                if !result.isDuplicate { notifier.notify() }
                return result
            } catch let error as PSQLError where error.sqlState != nil {
                if error.sqlState == "23505" {
                    switch error.constraintName {
                    case "commands_pkey" where attempt < 3:
                        // The same command id committed concurrently (on another stream): the
                        // retry finds it and answers as a duplicate or a conflict.
                        continue
                    case "events_event_id_key":
                        throw EventStoreError.invalidInput("an event id of this append is already stored")
                    default: break
                    }
                }
                throw Self.translate(error)
            } catch {
                throw Self.storeError(error)
            }
        }
    }

    private func appendInTransaction(
        _ rows: [EncodedEvent], to stream: String, expected: ExpectedVersion, commandID: UUID?,
        fingerprint: String, hook: (@Sendable (AppendStage) async throws -> Void)?, on conn: PostgresConnection
    ) async throws -> (AppendResult, commit: Bool) {
        // 1. Lock the stream's row (creating it at version 0 if needed): appends to one stream
        //    queue here; appends to other streams run in parallel.
        let actual = try await lockStream(stream, on: conn)
        // A statement that runs is not interrupted (postgres-nio does not cancel it), but a
        // cancelled append stops at the next step and rolls back.
        try Task.checkCancellation()

        // 2. Idempotency, checked under the stream lock so a concurrent retry of the same
        //    command on the same stream sees the first one's commit.
        if let commandID, var stored = try await storedCommand(commandID, on: conn) {
            guard stored.fingerprint == fingerprint else {
                throw EventStoreError.idempotencyConflict(commandID: commandID, stream: stored.result.stream)
            }
            stored.result.isDuplicate = true
            return (stored.result, false)
        }

        // 3. Expected version.
        guard expected.accepts(actual) else {
            throw EventStoreError.wrongExpectedVersion(stream: stream, expected: expected, actual: actual)
        }

        // 4. Events, stream version, command and notification in one statement.
        let category = streamCategory(stream)
        let lastVersion = actual + Int64(rows.count)
        var sql = PostgresQuery.StringInterpolation(literalCapacity: 1024, interpolationCount: rows.count * 11 + 10)
        sql.appendLiteral("WITH ins AS (INSERT INTO ")
        sql.appendInterpolation(unescaped: s)
        sql.appendLiteral(
            ".events (stream, stream_version, event_id, category, type, schema_version, data, command_id, causation_id, correlation_id, fields) VALUES "
        )
        for (index, row) in rows.enumerated() {
            sql.appendLiteral(index == 0 ? "(" : ", (")
            sql.appendInterpolation(stream)
            sql.appendLiteral(", ")
            sql.appendInterpolation(actual + Int64(index) + 1)
            sql.appendLiteral(", ")
            sql.appendInterpolation(row.id)
            sql.appendLiteral(", ")
            sql.appendInterpolation(category)
            sql.appendLiteral(", ")
            sql.appendInterpolation(row.type)
            sql.appendLiteral(", ")
            sql.appendInterpolation(row.schemaVersion)
            sql.appendLiteral(", ")
            try sql.appendInterpolation(row.data)
            sql.appendLiteral(", ")
            sql.appendInterpolation(row.commandID)
            sql.appendLiteral("::uuid, ")
            sql.appendInterpolation(row.causationID)
            sql.appendLiteral("::uuid, ")
            sql.appendInterpolation(row.correlationID)
            sql.appendLiteral("::uuid, ")
            sql.appendInterpolation(row.fields)
            sql.appendLiteral("::jsonb)")
        }
        sql.appendLiteral(" RETURNING position, recorded_at), upd AS (UPDATE ")
        sql.appendInterpolation(unescaped: s)
        sql.appendLiteral(".streams SET version = ")
        sql.appendInterpolation(lastVersion)
        sql.appendLiteral(" WHERE stream = ")
        sql.appendInterpolation(stream)
        sql.appendLiteral(")")
        if let commandID {
            sql.appendLiteral(", cmd AS (INSERT INTO ")
            sql.appendInterpolation(unescaped: s)
            sql.appendLiteral(
                ".commands (command_id, stream, first_version, last_version, first_position, last_position, transaction_id, fingerprint) SELECT "
            )
            sql.appendInterpolation(commandID)
            sql.appendLiteral(", ")
            sql.appendInterpolation(stream)
            sql.appendLiteral(", ")
            sql.appendInterpolation(actual + 1)
            sql.appendLiteral(", ")
            sql.appendInterpolation(lastVersion)
            sql.appendLiteral(", min(position), max(position), pg_current_xact_id(), ")
            sql.appendInterpolation(fingerprint)
            sql.appendLiteral(" FROM ins)")
        }
        sql.appendLiteral(" SELECT min(position), max(position), pg_current_xact_id()::text, max(recorded_at), pg_notify(")
        sql.appendInterpolation(notificationChannel)
        sql.appendLiteral(", '') FROM ins")
        let inserted = try await conn.query(PostgresQuery(stringInterpolation: sql), logger: queryLogger)
        var result: AppendResult?
        for try await (first, last, transaction, recordedAt) in inserted.decode((Int64, Int64, String, Date).self) {
            result = AppendResult(
                stream: stream, firstVersion: actual + 1, lastVersion: lastVersion, firstPosition: first,
                lastPosition: last, transaction: try Self.parseTransaction(transaction), recordedAt: recordedAt)
        }
        guard let result else { throw PostgresStoreError.unexpectedResult("the append inserted no rows") }
        if let hook { try await hook(.inserted(transaction: result.transaction)) }
        try Task.checkCancellation()
        return (result, true)
    }

    private func lockStream(_ stream: String, on conn: PostgresConnection) async throws -> Int64 {
        // First a transaction-scoped advisory lock per stream: waiting for it never assigns a
        // transaction id (a row lock can: `SELECT ... FOR UPDATE` on a row being updated takes
        // an id before it sleeps). So the id is assigned after the previous writer of the stream
        // has finished, and the (transaction id, position) order keeps every stream's order.
        // Before it, the shared appender lock, which makes readers wait for this transaction
        // (see the type's documentation): it must be held before the transaction has an id.
        try await conn.query(
            """
            SELECT pg_advisory_xact_lock_shared(hashtext(\(appenderLockClass)), 0),
                   pg_advisory_xact_lock(hashtext(\(streamLockClass)), hashtext(\(stream)))
            """, logger: queryLogger)
        if let version = try await selectStreamForUpdate(stream, on: conn) { return version }
        let inserted = try await conn.query(
            """
            INSERT INTO \(unescaped: s).streams (stream, version) VALUES (\(stream), 0)
            ON CONFLICT (stream) DO NOTHING RETURNING version
            """, logger: queryLogger)
        for try await version in inserted.decode(Int64.self) { return version }
        // Another transaction created it first (and has committed, or we would still wait).
        if let version = try await selectStreamForUpdate(stream, on: conn) { return version }
        throw PostgresStoreError.unexpectedResult("stream row '\(stream)' vanished")
    }

    private func selectStreamForUpdate(_ stream: String, on conn: PostgresConnection) async throws -> Int64? {
        let rows = try await conn.query(
            "SELECT version FROM \(unescaped: s).streams WHERE stream = \(stream) FOR UPDATE", logger: queryLogger)
        for try await version in rows.decode(Int64.self) { return version }
        return nil
    }

    private struct StoredCommand {
        var result: AppendResult
        var fingerprint: String
    }

    private func storedCommand(_ commandID: UUID, on conn: PostgresConnection) async throws -> StoredCommand? {
        let rows = try await conn.query(
            """
            SELECT stream, first_version, last_version, first_position, last_position,
                   transaction_id::text, fingerprint
            FROM \(unescaped: s).commands WHERE command_id = \(commandID)
            """, logger: queryLogger)
        for try await (stream, firstVersion, lastVersion, firstPosition, lastPosition, transaction, fingerprint)
            in rows.decode((String, Int64, Int64, Int64, Int64, String, String).self)
        {
            return StoredCommand(
                result: AppendResult(
                    stream: stream, firstVersion: firstVersion, lastVersion: lastVersion,
                    firstPosition: firstPosition, lastPosition: lastPosition,
                    transaction: try Self.parseTransaction(transaction), isDuplicate: true),
                fingerprint: fingerprint)
        }
        return nil
    }

    // MARK: Reading

    /// The columns every event read selects, in the order ``decodeEvent(_:)`` expects.
    var eventColumns: String { Self.eventColumns(prefix: "") }

    /// The event columns, each qualified with `prefix` (a table alias and a dot, or nothing).
    static func eventColumns(prefix p: String) -> String {
        """
        \(p)position, \(p)transaction_id::text AS transaction_text, \(p)stream, \(p)stream_version, \(p)event_id, \(p)type,
        \(p)schema_version, \(p)data, \(p)command_id, \(p)causation_id, \(p)correlation_id, \(p)fields::text,
        \(p)recorded_at
        """
    }

    public func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws -> [RecordedEvent] {
        try limits.validate(stream: stream)
        try limits.validate(pageSize: limit)
        let query: PostgresQuery =
            switch direction {
            case .forward:
                """
                SELECT \(unescaped: eventColumns) FROM \(unescaped: s).events
                WHERE stream = \(stream) AND stream_version >= \(version)
                ORDER BY stream_version LIMIT \(limit)
                """
            case .backward:
                """
                SELECT \(unescaped: eventColumns) FROM \(unescaped: s).events
                WHERE stream = \(stream) AND stream_version <= \(version)
                ORDER BY stream_version DESC LIMIT \(limit)
                """
            }
        return try await run { try await self.decodeEvents($0.query(query, logger: self.queryLogger)) }
    }

    public func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws
        -> [RecordedEvent]
    {
        try limits.validate(pageSize: limit)
        return try await run { conn in
            // Two statements, in this order: see the type's documentation.
            let horizon = try await self.horizon(on: conn).horizon
            let query = self.readAllQuery(after: position, below: horizon, limit: limit, filter: filter)
            return try await self.decodeEvents(conn.query(query, logger: self.queryLogger))
        }
    }

    private func readAllQuery(after position: LogPosition, below horizon: UInt64, limit: Int, filter: EventFilter)
        -> PostgresQuery
    {
        var sql = PostgresQuery.StringInterpolation(literalCapacity: 512, interpolationCount: 6)
        sql.appendLiteral("SELECT ")
        sql.appendInterpolation(unescaped: eventColumns)
        sql.appendLiteral(" FROM ")
        sql.appendInterpolation(unescaped: s)
        sql.appendLiteral(".events WHERE (transaction_id, position) > (")
        sql.appendInterpolation(String(position.transaction))
        sql.appendLiteral("::xid8, ")
        sql.appendInterpolation(position.position)
        // Only transactions below the horizon: no append can commit below it any more.
        sql.appendLiteral(") AND transaction_id < ")
        sql.appendInterpolation(String(horizon))
        sql.appendLiteral("::xid8")
        if let types = filter.types {
            sql.appendLiteral(" AND type = ANY(")
            sql.appendInterpolation(types.sorted())
            sql.appendLiteral(")")
        }
        if let categories = filter.categories {
            sql.appendLiteral(" AND category = ANY(")
            sql.appendInterpolation(categories.sorted())
            sql.appendLiteral(")")
        }
        // The text form of the id is selected under another name: an output column called
        // transaction_id would make ORDER BY sort by text ("1000" before "999").
        sql.appendLiteral(" ORDER BY transaction_id, position LIMIT ")
        sql.appendInterpolation(limit)
        return PostgresQuery(stringInterpolation: sql)
    }

    public func streamVersion(_ stream: String) async throws -> Int64 {
        try limits.validate(stream: stream)
        return try await run { conn in
            let rows = try await conn.query(
                "SELECT version FROM \(unescaped: self.s).streams WHERE stream = \(stream)", logger: self.queryLogger)
            for try await version in rows.decode(Int64.self) { return version }
            return 0
        }
    }

    public func headPosition() async throws -> LogPosition {
        try await run { conn in
            let horizon = String(try await self.horizon(on: conn).horizon)
            let rows = try await conn.query(
                """
                SELECT transaction_id::text AS transaction_text, position FROM \(unescaped: self.s).events
                WHERE transaction_id < \(horizon)::xid8
                ORDER BY transaction_id DESC, position DESC LIMIT 1
                """, logger: self.queryLogger)
            for try await (transaction, position) in rows.decode((String, Int64).self) {
                return LogPosition(transaction: try Self.parseTransaction(transaction), position: position)
            }
            return .start
        }
    }

    public func appendResult(forCommand commandID: UUID) async throws -> AppendResult? {
        try await run { try await self.storedCommand(commandID, on: $0)?.result }
    }

    // MARK: Read horizon

    /// Reads the read horizon and the oldest append still running: what holds readers back.
    ///
    /// Subscriptions only see events of transactions below ``PostgresReadHorizon/horizon``; an
    /// append transaction that stays open (``PostgresReadHorizon/oldestAppend``, with its age)
    /// stalls every reader of this schema until it ends. Transactions that do not append (other
    /// tables, other databases of the cluster) never do. For status pages, metrics and alerts.
    public func readHorizon() async throws -> PostgresReadHorizon {
        try await run { try await self.horizon(on: $0) }
    }

    /// The horizon, in a statement of its own: the statement that reads events must come after
    /// it, with a snapshot of its own (see the type's documentation).
    func horizon(on conn: PostgresConnection) async throws -> PostgresReadHorizon {
        // pg_stat_activity.backend_xid is a 32-bit xid: it is widened to 64 bits with the epoch
        // of the snapshot's xmax, from which a running transaction is less than 2^31 away.
        let rows = try await conn.query(
            """
            WITH snapshot AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax),
            holders AS (
                SELECT l.pid, a.xact_start, a.application_name,
                       (snapshot.xmax >> 32 << 32) + a.backend_xid::text::bigint AS xid, snapshot.xmax
                FROM snapshot, pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid = hashtext(\(appenderLockClass))::oid AND l.objid = 0 AND l.objsubid = 2
                  AND a.backend_xid IS NOT NULL
            ),
            widened AS (
                SELECT pid, xact_start, application_name,
                       CASE WHEN xid > xmax + 2147483648 THEN xid - 4294967296
                            WHEN xid < xmax - 2147483648 THEN xid + 4294967296
                            ELSE xid END AS xid
                FROM holders
            )
            SELECT snapshot.xmax, o.pid, o.xid, o.xact_start,
                   extract(epoch FROM clock_timestamp() - o.xact_start)::float8, o.application_name
            FROM snapshot LEFT JOIN (SELECT * FROM widened ORDER BY xid LIMIT 1) o ON true
            """, logger: queryLogger)
        for try await (xmax, pid, xid, started, age, application) in rows.decode(
            (Int64, Int32?, Int64?, Date?, Double?, String?).self)
        {
            var oldest: PostgresReadHorizon.Append?
            // Only the id counts for the horizon: pg_stat_activity shows backend_xid of every
            // session, but xact_start only of the sessions this role may inspect.
            if let pid, let xid {
                oldest = PostgresReadHorizon.Append(
                    backendPID: pid, transaction: UInt64(max(xid, 0)), startedAt: started, age: age,
                    applicationName: application ?? "")
            }
            let snapshotMax = UInt64(max(xmax, 0))
            return PostgresReadHorizon(
                horizon: min(snapshotMax, oldest?.transaction ?? snapshotMax), oldestAppend: oldest)
        }
        throw PostgresStoreError.unexpectedResult("the read horizon query returned no row")
    }

    // MARK: Snapshots

    public func saveSnapshot(_ snapshot: Snapshot) async throws {
        try limits.validate(stream: snapshot.stream)
        guard let schemaVersion = Int32(exactly: snapshot.schemaVersion) else {
            throw EventStoreError.invalidInput("snapshot schema version \(snapshot.schemaVersion) is out of range")
        }
        try await run { conn in
            _ = try await conn.query(
                """
                INSERT INTO \(unescaped: self.s).snapshots AS old (stream, version, schema_version, data, recorded_at)
                VALUES (\(snapshot.stream), \(snapshot.version), \(schemaVersion), \(snapshot.data), \(snapshot.recordedAt))
                ON CONFLICT (stream) DO UPDATE
                SET version = excluded.version, schema_version = excluded.schema_version,
                    data = excluded.data, recorded_at = excluded.recorded_at
                WHERE NOT (old.schema_version = excluded.schema_version AND old.version > excluded.version)
                """, logger: self.queryLogger)
        }
    }

    public func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        try limits.validate(stream: stream)
        guard let schemaVersion = Int32(exactly: schemaVersion) else { return nil }
        return try await run { conn in
            let rows = try await conn.query(
                """
                SELECT version, data, recorded_at FROM \(unescaped: self.s).snapshots
                WHERE stream = \(stream) AND schema_version = \(schemaVersion)
                """, logger: self.queryLogger)
            for try await (version, data, recordedAt) in rows.decode((Int64, Data, Date).self) {
                return Snapshot(
                    stream: stream, version: version, schemaVersion: Int(schemaVersion), data: data,
                    recordedAt: recordedAt)
            }
            return nil
        }
    }

    // MARK: Notifications

    public func appendNotifications() -> AsyncStream<Void> {
        let stream = notifier.stream()
        listener.request()
        return stream
    }

    /// The state of the notification listener: for operations and tests.
    public var notificationStatus: NotificationStatus { listener.status }

    // MARK: Helpers

    /// Runs `body` on a pooled connection once the store is ready (``run()`` has migrated it),
    /// translating driver errors (``storeError(_:)``).
    func run<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await readiness.waitUntilReady()
        return try await withPooledConnection(body)
    }

    /// Runs `body` on a pooled connection, ready or not, translating driver errors.
    func withPooledConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withConnection { conn in try await body(conn) }
        } catch {
            throw Self.storeError(error)
        }
    }

    func decodeEvents(_ rows: PostgresRowSequence) async throws -> [RecordedEvent] {
        var events: [RecordedEvent] = []
        for try await row in rows { events.append(try Self.decodeEvent(row.makeRandomAccess())) }
        return events
    }

    /// Decodes the event in columns 0..<13 of `row` (selected as ``eventColumns``).
    static func decodeEvent(_ row: PostgresRandomAccessRow) throws -> RecordedEvent {
        let fieldsJSON = try row[11].decode(String?.self)
        var fields: [String: String] = [:]
        if let fieldsJSON {
            fields = try JSONDecoder().decode([String: String].self, from: Data(fieldsJSON.utf8))
        }
        return RecordedEvent(
            position: try row[0].decode(Int64.self),
            transaction: try parseTransaction(try row[1].decode(String.self)),
            stream: try row[2].decode(String.self),
            streamVersion: try row[3].decode(Int64.self),
            id: try row[4].decode(UUID.self),
            type: try row[5].decode(String.self),
            schemaVersion: Int(try row[6].decode(Int32.self)),
            data: try row[7].decode(Data.self),
            metadata: EventMetadata(
                commandID: try row[8].decode(UUID?.self), causationID: try row[9].decode(UUID?.self),
                correlationID: try row[10].decode(UUID?.self), fields: fields),
            recordedAt: try row[12].decode(Date.self))
    }

    static func parseTransaction(_ text: String) throws -> UInt64 {
        guard let value = UInt64(text) else {
            throw PostgresStoreError.unexpectedResult("transaction id '\(text)' is not a 64-bit integer")
        }
        return value
    }

    /// What a caller gets instead of a driver error: `CancellationError` for a cancelled wait
    /// (for a connection, or a cancelled query), ``PostgresStoreError`` for every other error of
    /// postgres-nio; other errors (Backstage's own, a test hook's) are returned unchanged.
    static func storeError(_ error: any Error) -> any Error {
        switch error {
        case let error as PSQLError:
            if error.code == .queryCancelled { return CancellationError() }
            if error.code == .poolClosed { return PostgresStoreError.closed }
            return translate(error)
        case let error as ConnectionPoolError:
            if error == .requestCancelled { return CancellationError() }
            if error == .poolShutdown { return PostgresStoreError.closed }
            return PostgresStoreError.database(sqlState: "connection", message: "\(error)")
        case let error as PostgresDecodingError:
            return PostgresStoreError.unexpectedResult(
                "a column could not be decoded: \(error.targetType) from \(error.postgresType)")
        case is DecodingError:
            return PostgresStoreError.unexpectedResult("a stored value could not be decoded: \(error)")
        default:
            return error
        }
    }

    static func translate(_ error: PSQLError) -> PostgresStoreError {
        if let state = error.sqlState {
            return .database(sqlState: state, message: error.serverMessage ?? "\(error.code)")
        }
        return .database(sqlState: "connection", message: "\(error.code)")
    }
}

/// One event ready to be bound into an INSERT.
struct EncodedEvent: Sendable {
    var id: UUID
    var type: String
    var schemaVersion: Int32
    var data: Data
    var commandID: UUID?
    var causationID: UUID?
    var correlationID: UUID?
    var fields: String?

    init(_ event: EventData) throws(EventStoreError) {
        guard let version = Int32(exactly: event.schemaVersion) else {
            throw .invalidInput("schema version \(event.schemaVersion) of \(event.type) is out of range")
        }
        id = event.id
        type = event.type
        schemaVersion = version
        data = event.data
        commandID = event.metadata.commandID
        causationID = event.metadata.causationID
        correlationID = event.metadata.correlationID
        if event.metadata.fields.isEmpty {
            fields = nil
        } else {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            do {
                fields = String(decoding: try encoder.encode(event.metadata.fields), as: UTF8.self)
            } catch {
                throw .invalidInput("metadata fields of \(event.type) cannot be encoded: \(error)")
            }
        }
    }
}

/// How far readers of a ``PostgresEventStore`` can see, and what holds them back.
public struct PostgresReadHorizon: Sendable, Hashable {
    /// An append transaction still running.
    public struct Append: Sendable, Hashable {
        /// The server process id of its session (for `pg_stat_activity` or `pg_terminate_backend`).
        public var backendPID: Int32
        /// Its transaction id: events of this transaction and later ones wait for it to end.
        public var transaction: UInt64
        /// When the transaction started (nil when the store's role may not see other roles'
        /// sessions in `pg_stat_activity`: grant it `pg_read_all_stats`).
        public var startedAt: Date?
        /// How long it has been running, in seconds, by the server's clock (nil as `startedAt`).
        public var age: Double?
        /// The `application_name` of its session.
        public var applicationName: String
    }

    /// Readers see the events of transactions below this id.
    public var horizon: UInt64
    /// The running append with the lowest transaction id, which holds the horizon, if any.
    /// An age well above the time an append takes means a stalled writer: every subscription of
    /// the schema waits for it.
    public var oldestAppend: Append?
}
