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
///   *read horizon*, ordered by (transaction id, position); a `LogPosition` holds that pair.
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
/// - **Group commit, one round trip**: appends that wait at the same moment in one process share
///   one transaction and one commit. The store's group writers (2, children of ``run()``, each
///   writing on a connection of its own, which it keeps between groups on the store's own pool
///   when that pool has room for them) take the queued appends: an idle writer takes an append
///   at once (a group of one never waits for company); while both are busy, appends queue and the
///   next free writer takes them all (one append per stream and per command id in a group).
///   A group is one autocommit call of the schema's `append_batch` function (migration 7, with a
///   generic plan and, since migration 8, index lookups whatever the statistics when it was
///   planned; a schema not yet migrated that far: `append_group` of migration 6), a statement
///   prepared on each connection: it
///   takes the appender lock, then the streams' locks in hash order (the same order in every
///   process, so two groups cannot deadlock), checks every append in one statement (stream
///   versions and stored command ids looked up together), and writes every accepted append with
///   one multi-row insert from arrays (`unnest`). A wrong expected version or a reused command
///   id rejects only its own append; no savepoints. When the statement fails as a whole (a
///   command id stored at the same moment by another process, an event id already stored), each
///   append of the group is written alone, so the error reaches only its cause. A group of one
///   (a lone caller's append) calls `append_one` (migration 9) instead: the same locks, checks
///   and rows in plain statements, without the joins, sorts and aggregate that a group's
///   statement initialises at every call (about a quarter of the server's time per lone append).
/// - **Notifications**: a transaction that appended is followed by a notification (`pg_notify`)
///   sent after its commit; one that did not (all its appends rejected or duplicates) by none.
///   Notifications are at least 2 ms apart: the first commit after that interval sends one on
///   its own connection once its callers have their results (the other group writer takes the
///   appends queued meanwhile), and it covers the commits made since the last one; when no
///   commit follows, a deferred sender sends the owed one within two intervals, and a graceful
///   stop sends it before the pool closes. Readers in the same process are woken at once, in
///   memory; other processes' readers learn of a commit at most 4 ms later than with a
///   notification of its own. (A `NOTIFY` inside the append transaction would hold PostgreSQL's
///   cluster-wide notification lock through the commit's WAL flush and serialise every appending
///   transaction of the cluster.) ``appendNotifications()`` listens on a dedicated connection
///   that reconnects and listens again when it is lost.
///   Notifications are hints: readers still poll.
/// - **Event data is `jsonb`**, queryable with PostgreSQL's JSON operators. jsonb stores the JSON
///   value, not the text: payloads read back as the same JSON value in PostgreSQL's rendering
///   (keys reordered, whitespace normalised). Idempotency fingerprints are computed from the bytes
///   the caller appended and stored with the command, never from stored data, so they stay
///   deterministic. A payload that jsonb cannot hold as the same value (not JSON, invalid UTF-8,
///   `\u0000`, duplicate keys, see `isStorableAsJSONB(_:)`) is stored in `data_bytes` and
///   reads back byte for byte.
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
        /// How long a group writer keeps an idle connection before it goes back to the pool.
        package var keptConnectionIdleLimit: Duration = .seconds(10)
        /// The least time between two notifications of the store's appends (see
        /// ``PostgresEventStore/notifyAfterCommit(on:)``); other processes' readers learn of a
        /// commit at most twice this later than with a notification of its own.
        package var notificationInterval: Duration = .milliseconds(2)

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
    /// The statement that notifies it; the schema in a comment, so that operators (and tests)
    /// see which store's writer sent it.
    private let notificationSQL: String
    /// Signalled when a commit left its notification to ``runDeferredNotifications()``.
    private let notificationDue = Signal()

    let configuration: Configuration
    let logger: Logger
    let queryLogger: Logger
    private let notifier = AppendNotifier()
    private let groups = Mutex(GroupQueue())
    /// The append functions ``prepare()`` found in the schema.
    private let appendFunctions = Mutex(AppendFunctions())
    private let metrics = PostgresStoreMetrics()
    /// The pool this store created and runs in ``run()``; nil when the caller runs the client.
    let ownedClient: PostgresClient?
    /// Whether the group writers keep their connections between groups: on the store's own pool
    /// when it has room for them beside the listener, leadership, and readers (at least
    /// ``minimumConnectionsToKeep`` connections).
    let keepsConnections: Bool
    let listener: NotificationListener
    let readiness = ServiceReadiness(closedError: PostgresStoreError.closed)
    /// Reads of the global log known to have nothing more below a horizon (see ``readAll(after:limit:filter:)``).
    let completeReads = CompleteReads()

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
        self.keepsConnections = owned && configuration.maximumConnections >= Self.minimumConnectionsToKeep
        self.schema = schema
        self.limits = configuration.limits
        self.configuration = configuration
        self.logger = configuration.logger
        // postgres-nio logs queries at debug/trace level: the store's logger, at its own level.
        self.queryLogger = configuration.logger
        self.notificationChannel = String("backstage_\(schema.rawValue)".prefix(63))
        self.notificationSQL = "SELECT pg_notify($1, '') -- \(schema.rawValue)"
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
            try await self.findAppendFunction(on: conn)
        }
    }

    /// The append functions appends call: for a group (migration 7's, or migration 6's on a
    /// schema not migrated that far), and for a group of one (migration 9's, when the schema has it).
    struct AppendFunctions: Sendable {
        var group = PostgresMigrations.legacyAppendFunctionName
        var lone: String?
    }

    /// The append function groups call.
    var appendFunction: String { appendFunctions.withLock { $0.group } }

    /// The append function a group of one calls; nil when it calls ``appendFunction``.
    var loneAppendFunction: String? { appendFunctions.withLock { $0.lone } }

    /// Makes every append call `name` (tests: a process of an older version calls `append_group`).
    func useAppendFunction(_ name: String) {
        appendFunctions.withLock { $0 = AppendFunctions(group: name, lone: nil) }
    }

    /// Chooses the append functions the schema has: migration 7's for groups, else migration 6's,
    /// and migration 9's for a group of one.
    func findAppendFunction(on conn: PostgresConnection) async throws {
        let group = "\(s).\(PostgresMigrations.appendFunctionName)"
        let lone = "\(s).\(PostgresMigrations.loneAppendFunctionName)"
        let rows = try await conn.query(
            "SELECT to_regproc(\(group)) IS NOT NULL, to_regproc(\(lone)) IS NOT NULL", logger: queryLogger)
        for try await (hasGroup, hasLone) in rows.decode((Bool, Bool).self) {
            appendFunctions.withLock {
                $0.group =
                    hasGroup ? PostgresMigrations.appendFunctionName : PostgresMigrations.legacyAppendFunctionName
                $0.lone = hasLone ? PostgresMigrations.loneAppendFunctionName : nil
            }
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
            try await self.findAppendFunction(on: conn)
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
    /// transaction open. For tests of the ordering guarantees. An append with a hook runs in a
    /// transaction of its own, outside group commit.
    package func append(
        _ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?,
        hook: (@Sendable (AppendStage) async throws -> Void)?
    ) async throws -> AppendResult {
        try limits.validate(append: events, to: stream)
        try await readiness.waitUntilReady()
        let started = ContinuousClock.now
        let item = PendingAppend(
            rows: try events.map { try EncodedEvent($0) }, stream: stream, expected: expected, commandID: commandID,
            fingerprint: commandID == nil ? "" : appendFingerprint(events))
        let result: AppendResult
        if let hook {
            result = try await writeAlone(item, hook: hook)
            if !result.isDuplicate { notifier.notify() }
        } else {
            result = try await appendInGroup(item)
        }
        metrics.appended(events: events.count, duration: ContinuousClock.now - started)
        return result
    }

    // MARK: Group commit

    /// Appends that wait at the same moment share one transaction. The store's group writers
    /// (``maxGroupsInFlight`` of them, children of ``run()``) take the queued appends: an idle
    /// writer is woken by the first append queued, so a caller alone never waits for company;
    /// while the writers are busy, appends queue, and the next free writer takes them all as one
    /// group.
    ///
    /// Cancellation: an append cancelled while it is queued leaves the queue, writes nothing and
    /// throws `CancellationError`. Once a writer has taken it, the caller's cancellation no longer
    /// reaches the group (it runs in the writer, not in the caller's task): the caller gets its
    /// real outcome, never a `CancellationError` for events that were stored.
    private func appendInGroup(_ item: PendingAppend) async throws -> AppendResult {
        try Task.checkCancellation()
        let outcome = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: AppendContinuation) in
                let queued = groups.withLock { q -> Result<IdleWriter?, any Error> in
                    // Checked under the lock: a cancellation handler that ran before this found
                    // nothing to remove.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if q.stopped { return .failure(PostgresStoreError.closed) }
                    item.continuation = continuation
                    q.pending.append(item)
                    return .success(q.idleWriters.popLast())
                }
                switch queued {
                case .success(let writer): writer?.continuation.resume(returning: true)
                case .failure(let error): continuation.resume(returning: .failure(error))
                }
            }
        } onCancel: {
            // Still queued: leave the queue without writing.
            let waiting = groups.withLock { q -> AppendContinuation? in
                guard let index = q.pending.firstIndex(where: { $0 === item }) else { return nil }
                q.pending.remove(at: index)
                return item.continuation
            }
            waiting?.resume(returning: .failure(CancellationError()))
        }
        return try outcome.get()
    }

    /// One group writer, a child task of ``run()``: writes groups until the store stops. It
    /// leases a connection when appends are queued and only then takes them (an append waiting
    /// for a connection is still queued, so its caller may cancel it). On the store's own pool
    /// (``init(url:configuration:)``, with room for the writers, the listener and readers) it
    /// keeps its connection between groups, so a lone caller's append costs no pool lease; on a
    /// pool the caller passes in, whose size the store cannot know, it gives the connection back
    /// when the queue is empty. A kept connection idle for 10 seconds goes back to the pool
    /// (``runConnectionReaper()``), whose keep-alive then checks it. On a graceful stop
    /// (``close()``, graceful shutdown) it first writes what is queued; when ``run()`` is
    /// cancelled, the appends still queued fail with ``PostgresStoreError/closed``.
    func runGroupWriter() async {
        while await waitForAppends(holding: false) == .appends {
            do {
                try await client.withConnection { conn in
                    self.groups.withLock { $0.writersOnConnections += 1 }
                    defer { self.groups.withLock { $0.writersOnConnections -= 1 } }
                    // A connection that closed (also while kept idle) is given back and the pool
                    // replaces it: a query on it could wait forever (postgres-nio 1.33).
                    // The writer runs on the connection's event loop: its queries are written and
                    // their results taken where the connection's I/O happens, without a thread
                    // hop each way.
                    await withTaskExecutorPreference(EventLoopTaskExecutor(conn.eventLoop)) {
                        while true {
                            while !conn.isClosed, let group = self.takeQueuedGroup() {
                                await self.writeGroup(group, on: conn)
                            }
                            guard self.keepsConnections, !conn.isClosed,
                                await self.waitForAppends(holding: true) == .appends
                            else { break }
                        }
                    }
                    if conn.isClosed {
                        // Given back once the pool has seen it close (its close callback runs first),
                        // so the pool cannot lend it again.
                        _ = try? await conn.closeFuture.get()
                    }
                }
            } catch {
                // No connection (the pool stopped, the server is unreachable): the appends
                // waiting now fail with the reason, nothing of them was sent.
                var reported = Self.storeError(error)
                if reported is CancellationError { reported = PostgresStoreError.closed }
                if let group = takeQueuedGroup() {
                    _ = deliver(group.map { _ in .failure(reported) }, to: group)
                }
            }
        }
    }

    /// Stops the group writers: an idle one ends at once, a busy one after its group and the
    /// queue (see ``runGroupWriter()``). Appends queued from now on fail with ``PostgresStoreError/closed``.
    func stopGroupWriters() {
        let idle = groups.withLock { q -> [IdleWriter] in
            q.stopping = true
            defer { q.idleWriters.removeAll() }
            return q.idleWriters
        }
        for writer in idle { writer.continuation.resume(returning: true) }
    }

    /// Gives the connections that group writers have kept idle for 10 seconds or longer back to
    /// the pool, whose keep-alive checks idle connections (a kept one is leased, so the pool does
    /// not: a network path dropped without a word would only show at the next append). A child
    /// task of ``run()``, until it is cancelled; one timer for the store.
    func runConnectionReaper() async {
        guard keepsConnections else { return }
        let limit = configuration.keptConnectionIdleLimit
        while !Task.isCancelled {
            try? await Task.sleep(for: limit)
            let now = ContinuousClock.now
            let expired = groups.withLock { q -> [IdleWriter] in
                let isExpired = { (writer: IdleWriter) in writer.holding && now - writer.since >= limit }
                defer { q.idleWriters.removeAll(where: isExpired) }
                return q.idleWriters.filter(isExpired)
            }
            for writer in expired { writer.continuation.resume(returning: false) }
        }
    }

    /// Why a group writer stopped waiting.
    private enum Wake {
        /// Appends are queued.
        case appends
        /// The store stops: the appends still queued failed with ``PostgresStoreError/closed``.
        case stop
        /// The connection the writer holds has been idle too long: give it back.
        case giveBack
    }

    /// Waits until appends are queued, or the store stops; a writer `holding` a connection also
    /// until the connection has been idle too long.
    private func waitForAppends(holding: Bool) async -> Wake {
        while true {
            enum Next {
                case work
                case stop([PendingAppend])
                case wait
            }
            let next = groups.withLock { q -> Next in
                if q.stopping && (q.pending.isEmpty || Task.isCancelled) {
                    q.stopped = true
                    defer { q.pending.removeAll() }
                    return .stop(q.pending)
                }
                return q.pending.isEmpty ? .wait : .work
            }
            switch next {
            case .work:
                return .appends
            case .stop(let abandoned):
                for item in abandoned { item.continuation?.resume(returning: .failure(PostgresStoreError.closed)) }
                return .stop
            case .wait:
                // Woken by the next append queued, by stopGroupWriters(), or (holding a
                // connection) by runConnectionReaper().
                let woken = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                    let resumeNow = groups.withLock { q -> Bool in
                        if !q.pending.isEmpty || q.stopping { return true }
                        let writer = IdleWriter(continuation: continuation, holding: holding, since: .now)
                        // An append wakes the last one: a writer that holds a connection first.
                        if holding { q.idleWriters.append(writer) } else { q.idleWriters.insert(writer, at: 0) }
                        return false
                    }
                    if resumeNow { continuation.resume(returning: true) }
                }
                if !woken { return .giveBack }
            }
        }
    }

    /// The queued appends that fit in one group, taken out of the queue; nil when none is queued.
    private func takeQueuedGroup() -> [PendingAppend]? {
        groups.withLock { q in q.pending.isEmpty ? nil : Self.takeGroup(from: &q) }
    }

    /// Takes the queued appends that fit in one group, oldest first: one append per stream and
    /// per command id (the next group takes the others, in their order), and bounded statements.
    private static func takeGroup(from q: inout GroupQueue) -> [PendingAppend] {
        var group: [PendingAppend] = []
        var streams: Set<String> = []
        var commands: Set<UUID> = []
        var events = 0
        var bytes = 0
        var kept: [PendingAppend] = []
        for next in q.pending {
            let fits =
                group.isEmpty
                || (group.count < maxAppendsPerGroup && events + next.rows.count <= maxEventsPerGroup
                    && bytes + next.bytes <= maxBytesPerGroup)
            if fits, !streams.contains(next.stream), next.commandID.map({ !commands.contains($0) }) ?? true {
                group.append(next)
                streams.insert(next.stream)
                if let id = next.commandID { commands.insert(id) }
                events += next.rows.count
                bytes += next.bytes
            } else {
                kept.append(next)
            }
        }
        q.pending = kept
        return group
    }

    /// Writes a group in one transaction on `conn` (one round trip: the append function in
    /// autocommit), hands every member its outcome, then sees to the notification when it stored
    /// events (``notifyAfterCommit(on:)``). When the statement fails as a whole (a unique
    /// violation from a concurrent process, a payload the server refuses), each append is written
    /// alone, so an error only rejects the append that caused it; a group of one is written again
    /// when ``writeAlone(_:hook:on:)`` retries its error.
    private func writeGroup(_ group: [PendingAppend], on conn: PostgresConnection) async {
        do {
            let outcomes = try await callAppendFunction(group, on: conn, forceBytes: false)
            if deliver(outcomes, to: group) {
                await notifyAfterCommit(on: conn)
            }
        } catch let error as PSQLError
            where error.sqlState != nil && !conn.isClosed
            && (group.count > 1 || Self.retriesAlone(after: error, item: group[0], forceBytes: false))
        {
            var outcomes: [Result<AppendResult, any Error>] = []
            for item in group {
                // Each append commits and notifies on its own; none is sent on a connection that
                // closed (a server shutting down ends it with an error that has a state).
                if conn.isClosed {
                    outcomes.append(.failure(Self.appendError(error)))
                    continue
                }
                do {
                    outcomes.append(.success(try await writeAlone(item, hook: nil, on: conn)))
                } catch {
                    outcomes.append(.failure(error))
                }
            }
            _ = deliver(outcomes, to: group)
        } catch {
            let translated = Self.appendError(error)
            _ = deliver(group.map { _ in .failure(translated) }, to: group)
        }
    }

    /// Hands each member of `group` its outcome, counts the group; true when it stored events.
    private func deliver(_ outcomes: [Result<AppendResult, any Error>], to group: [PendingAppend]) -> Bool {
        metrics.committed(appends: group.count)
        groups.withLock { q in
            q.statistics.transactions += 1
            q.statistics.appends += group.count
            q.statistics.largestGroup = max(q.statistics.largestGroup, group.count)
        }
        let stored = outcomes.contains { (try? $0.get())?.isDuplicate == false }
        if stored { notifier.notify() }
        for (member, outcome) in zip(group, outcomes) {
            member.continuation?.resume(returning: outcome)
        }
        return stored
    }

    // MARK: Notifications

    /// Sees that a notification follows the commit just made on `conn`, which stored events.
    /// Other processes' readers wait for it; this process's are woken at once (``deliver(_:to:)``).
    /// Notifications are at least the configuration's `notificationInterval` (2 ms) apart: a
    /// commit made sooner after the last one owes its notification, and the next commit after the
    /// interval sends one that covers it, or else ``runDeferredNotifications()`` does. A lone
    /// caller committing about once a millisecond pays a notification's round trip once in two
    /// or three commands instead of at each, and the cluster-wide notification queue takes at
    /// most 500 entries a second from a store.
    private func notifyAfterCommit(on conn: PostgresConnection) async {
        let interval = configuration.notificationInterval
        let sendNow = groups.withLock { $0.notifications.committed(at: .now, interval: interval) }
        if sendNow {
            await notify(on: conn)
        } else {
            notificationDue.signal()
        }
    }

    /// Sends the owed notifications (see ``notifyAfterCommit(on:)``) on a pooled connection,
    /// each twice the notification interval after the last notification, unless the next commit
    /// sent it first. A child task of ``run()``, until it is cancelled (after the group writers
    /// stopped and ``sendDueNotification()`` sent the last one).
    func runDeferredNotifications() async {
        let wait = configuration.notificationInterval * 2
        while !Task.isCancelled {
            await notificationDue.wait()
            // Until two intervals have passed since the last notification, which a commit may
            // have sent meanwhile: the next commit after the interval usually sends the owed one,
            // on its own connection, and this one then finds nothing owed (or a newer one, not
            // yet due).
            while !Task.isCancelled, let last = groups.withLock({ $0.notifications.lastSent }),
                ContinuousClock.now < last + wait
            {
                try? await Task.sleep(until: last + wait)
            }
            await sendDueNotification()
        }
    }

    /// Sends the owed notification, if there is one, on a pooled connection.
    func sendDueNotification() async {
        // When run() is cancelled the pool stops too: notifications are best effort.
        guard !Task.isCancelled, groups.withLock({ $0.notifications.takeDue(at: .now) }) else { return }
        do {
            try await client.withConnection { conn in await self.notify(on: conn) }
        } catch {
            logger.debug("could not send the append notification", metadata: ["error": "\(error)"])
        }
    }

    /// Sends one notification on `conn`, after the commits it tells of. `NOTIFY` inside the
    /// append transaction would take PostgreSQL's global notification lock at commit and hold it
    /// through the commit's WAL flush, so concurrent appending transactions (other groups, other
    /// processes) could not share a flush; sent in a transaction that wrote nothing else, its
    /// commit does not wait for a WAL flush, and the lock is held only for the statement. A
    /// prepared statement: it costs a Bind and an Execute, like an append. Best effort: a
    /// notification that cannot be sent is dropped (logged at debug level); readers still poll.
    private func notify(on conn: PostgresConnection) async {
        groups.withLock { $0.notificationsSent += 1 }
        do {
            try await conn.unlessClosed {
                var binds = PostgresBindings(capacity: 1)
                binds.append(self.notificationChannel)
                let rows = try await conn.executePrepared(self.notificationSQL, binds: binds, logger: self.queryLogger)
                for try await _ in rows {}
            }
        } catch {
            logger.debug("could not send the append notification", metadata: ["error": "\(error)"])
        }
    }

    /// Notifications sent (or tried) since the store was opened.
    package var notificationsSent: Int { groups.withLock { $0.notificationsSent } }

    /// Whether a commit waits for a notification that ``runDeferredNotifications()`` owes.
    package var notificationOwed: Bool { groups.withLock { $0.notifications.due } }

    /// Group writers that have a connection now (writing, or keeping it idle).
    package var writersOnConnections: Int { groups.withLock { $0.writersOnConnections } }

    /// Writes one append in a transaction of its own, retrying a command id that another process
    /// stored at the same moment; a payload the server refuses as jsonb is stored as bytes.
    /// Notifies after the commit when it stored events.
    private func writeAlone(
        _ item: PendingAppend, hook: (@Sendable (AppendStage) async throws -> Void)?
    ) async throws -> AppendResult {
        do {
            return try await client.withConnection { conn in try await self.writeAlone(item, hook: hook, on: conn) }
        } catch {
            throw Self.storeError(error)
        }
    }

    /// ``writeAlone(_:hook:)`` on `conn`.
    private func writeAlone(
        _ item: PendingAppend, hook: (@Sendable (AppendStage) async throws -> Void)?, on conn: PostgresConnection
    ) async throws -> AppendResult {
        var attempt = 0
        var forceBytes = false
        while true {
            attempt += 1
            do {
                let outcomes: [Result<AppendResult, any Error>]
                if let hook {
                    outcomes = try await PostgresTransaction.run(on: conn, logger: self.queryLogger) { conn in
                        let outcomes = try await self.callAppendFunction([item], on: conn, forceBytes: forceBytes)
                        let result = try outcomes[0].get()
                        if !result.isDuplicate {
                            try await hook(.inserted(transaction: result.transaction))
                            try Task.checkCancellation()
                        }
                        return (outcomes, true)
                    }
                } else {
                    outcomes = try await self.callAppendFunction([item], on: conn, forceBytes: forceBytes)
                }
                let result = try outcomes[0].get()
                if !result.isDuplicate { await self.notifyAfterCommit(on: conn) }
                return result
            } catch let error as PSQLError where error.sqlState != nil {
                guard attempt < 3, Self.retriesAlone(after: error, item: item, forceBytes: forceBytes) else {
                    throw Self.appendError(error)
                }
                // A payload refused as jsonb: the next attempt stores the payloads as bytes.
                if error.sqlState != "23505" { forceBytes = true }
            } catch {
                throw Self.storeError(error)
            }
        }
    }

    /// Whether an append written alone is written again after `error`: the same command id
    /// committed concurrently on another stream (the retry finds it and answers as a duplicate or
    /// a conflict), or JSON payloads the server refused as jsonb (the retry stores them as bytes).
    private static func retriesAlone(after error: PSQLError, item: PendingAppend, forceBytes: Bool) -> Bool {
        if error.sqlState == "23505" { return error.constraintName == "commands_pkey" }
        return error.sqlState?.hasPrefix("22") == true && !forceBytes && item.rows.contains(where: \.isJSON)
    }

    static func appendError(_ error: any Error) -> any Error {
        if let error = error as? PSQLError, error.sqlState == "23505", error.constraintName == "events_event_id_key" {
            return EventStoreError.invalidInput("an event id of this append is already stored")
        }
        return storeError(error)
    }

    /// Calls the append function for `group` (distinct streams, distinct command ids) and maps
    /// its rows to one outcome per append: migration 9's function for a group of one, the group's
    /// function otherwise (both return the same rows).
    private func callAppendFunction(
        _ group: [PendingAppend], on conn: PostgresConnection, forceBytes: Bool
    ) async throws -> [Result<AppendResult, any Error>] {
        let eventCount = group.reduce(0) { $0 + $1.rows.count }
        var events = EventArrays(events: eventCount, bytes: group.reduce(0) { $0 + $1.bytes })
        var binds = PostgresBindings(capacity: 20)
        let functions = appendFunctions.withLock { $0 }
        let sql: String
        // The append values first (scalars for one append, arrays for a group), then the events'
        // arrays and the lock classes.
        if group.count == 1, let lone = functions.lone {
            let item = group[0]
            for row in item.rows { events.append(row, forceBytes: forceBytes) }
            binds.append(item.stream)
            binds.append(streamCategory(item.stream))
            binds.append(Self.expectedCode(item.expected))
            binds.append(item.commandID)
            binds.append(item.fingerprint)
            sql = "\(s).\(lone)($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        } else {
            var streams = PostgresArrayParameter(element: .text, array: .textArray)
            var categories = PostgresArrayParameter(element: .text, array: .textArray)
            var expected = PostgresArrayParameter(element: .int8, array: .int8Array)
            var commands = PostgresArrayParameter(element: .uuid, array: .uuidArray)
            var fingerprints = PostgresArrayParameter(element: .text, array: .textArray)
            var counts = PostgresArrayParameter(element: .int4, array: .int4Array)
            var apps = PostgresArrayParameter(element: .int4, array: .int4Array, capacity: eventCount * 8)
            var offsets = PostgresArrayParameter(element: .int4, array: .int4Array, capacity: eventCount * 8)
            for (index, item) in group.enumerated() {
                streams.append(item.stream)
                categories.append(streamCategory(item.stream))
                expected.append(Self.expectedCode(item.expected))
                commands.append(item.commandID)
                fingerprints.append(item.fingerprint)
                counts.append(Int32(item.rows.count))
                for (offset, row) in item.rows.enumerated() {
                    apps.append(Int32(index + 1))
                    offsets.append(Int32(offset + 1))
                    events.append(row, forceBytes: forceBytes)
                }
            }
            for array in [streams, categories, expected, commands, fingerprints, counts, apps, offsets] {
                binds.append(array)
            }
            sql =
                "\(s).\(functions.group)($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        }
        events.bind(into: &binds)
        binds.append(appenderLockClass)
        binds.append(streamLockClass)
        // Prepared once per connection: each call then only binds and executes.
        let rows = try await conn.executePrepared(
            """
            SELECT append_index, status, actual_version, first_version, last_version, first_position,
                   last_position, transaction_text, recorded_at, stored_stream
            FROM \(sql)
            """, binds: binds, logger: queryLogger)
        var outcomes = [Result<AppendResult, any Error>?](repeating: nil, count: group.count)
        for try await row in rows {
            let (index, status, actual, first, last, firstPosition, lastPosition, transaction, recordedAt, stored) =
                try row.decode((Int32, Int32, Int64, Int64?, Int64?, Int64?, Int64?, String?, Date?, String?).self)
            let i = Int(index) - 1
            guard group.indices.contains(i) else {
                throw PostgresStoreError.unexpectedResult("the append function returned append \(index)")
            }
            let item = group[i]
            switch status {
            case 0, 1:
                guard let first, let last, let firstPosition, let lastPosition, let transaction else {
                    throw PostgresStoreError.unexpectedResult("the append function returned an incomplete result")
                }
                outcomes[i] = .success(
                    AppendResult(
                        stream: status == 0 ? item.stream : (stored ?? item.stream), firstVersion: first,
                        lastVersion: last, firstPosition: firstPosition, lastPosition: lastPosition,
                        transaction: try Self.parseTransaction(transaction), isDuplicate: status == 1,
                        recordedAt: status == 0 ? recordedAt : nil))
            case 2:
                outcomes[i] = .failure(
                    EventStoreError.wrongExpectedVersion(stream: item.stream, expected: item.expected, actual: actual))
            default:
                outcomes[i] = .failure(
                    EventStoreError.idempotencyConflict(commandID: item.commandID ?? UUID(), stream: stored ?? ""))
            }
        }
        return try outcomes.map {
            guard let outcome = $0 else {
                throw PostgresStoreError.unexpectedResult("the append function returned no row for an append")
            }
            return outcome
        }
    }

    /// The append function's code for an expected version: -1 any, -3 stream exists, n exactly n.
    private static func expectedCode(_ expected: ExpectedVersion) -> Int64 {
        switch expected {
        case .any: -1
        case .noStream: 0
        case .streamExists: -3
        case .exact(let version): version
        }
    }

    /// Counters of group commit since the store was opened.
    public struct Statistics: Sendable, Hashable {
        /// Group transactions written (successful or not).
        public var transactions = 0
        /// Appends those transactions carried (accepted or rejected).
        public var appends = 0
        /// Most appends carried by one transaction.
        public var largestGroup = 0
    }

    /// Counters of group commit since the store was opened: how well appends are grouped.
    public var statistics: Statistics { groups.withLock { $0.statistics } }

    /// Appends waiting for a group (for tests and status pages).
    package var queuedAppends: Int { groups.withLock { $0.pending.count } }

    /// Most groups written at the same time by one store (each on its own connection).
    static let maxGroupsInFlight = 2
    /// The least `maximumConnections` of the store's own pool with which the group writers keep
    /// their connections between groups (2 writers beside the listener, leadership, readers).
    static let minimumConnectionsToKeep = 10
    /// Bounds of one group's statement.
    static let maxAppendsPerGroup = 256
    static let maxEventsPerGroup = 10_000
    static let maxBytesPerGroup = 16 << 20

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

    // Every read runs as a statement prepared on its connection (see ``PostgresConnection/executePrepared(_:binds:logger:)``),
    // with transaction ids bound and read in binary, and rows decoded by position.

    /// The columns every event read selects, in the order ``decodeEvent(_:)-(PostgresRow)`` expects.
    var eventColumns: String { Self.eventColumns(prefix: "") }

    /// The event columns, each qualified with `prefix` (a table alias and a dot, or nothing). The
    /// transaction id and the metadata fields are selected as they are (binary `xid8` and `jsonb`);
    /// the payload is a jsonb value in binary format (format version 1, then its JSON text) or 0
    /// followed by the bytes of a payload stored as bytes.
    static func eventColumns(prefix p: String) -> String {
        """
        \(p)position, \(p)transaction_id, \(p)stream, \(p)stream_version, \(p)event_id, \(p)type,
        \(p)schema_version, CASE WHEN \(p)data IS NULL THEN '\\x00'::bytea || \(p)data_bytes ELSE jsonb_send(\(p)data) END,
        \(p)command_id, \(p)causation_id, \(p)correlation_id, \(p)fields,
        \(p)recorded_at
        """
    }

    public func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws -> [RecordedEvent] {
        try limits.validate(stream: stream)
        try limits.validate(pageSize: limit)
        let sql =
            switch direction {
            case .forward:
                """
                SELECT \(eventColumns) FROM \(s).events
                WHERE stream = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3
                """
            case .backward:
                """
                SELECT \(eventColumns) FROM \(s).events
                WHERE stream = $1 AND stream_version <= $2 ORDER BY stream_version DESC LIMIT $3
                """
            }
        var binds = PostgresBindings(capacity: 3)
        binds.append(stream)
        binds.append(version)
        binds.append(Int64(limit))
        return try await run { conn in
            try await Self.decodeEvents(conn.executePrepared(sql, binds: binds, logger: self.queryLogger))
        }
    }

    public func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws
        -> [RecordedEvent]
    {
        try limits.validate(pageSize: limit)
        if let partition = filter.partition { await preparePartitionIndex(partition) }
        return try await run { conn in
            // Two statements, in this order: see the type's documentation.
            let horizon = try await self.horizon(on: conn).horizon
            // A reader woken by a hint that brought nothing new (its own commit's notification
            // echoed, an append still running below the others) skips the page statement.
            if self.completeReads.isComplete(after: position, filter: filter, below: horizon) { return [] }
            let (sql, binds) = self.readAllStatement(after: position, below: horizon, limit: limit, filter: filter)
            let events = try await Self.decodeEvents(conn.executePrepared(sql, binds: binds, logger: self.queryLogger))
            if events.count < limit {
                self.completeReads.record(after: events.last?.logPosition ?? position, filter: filter, below: horizon)
            }
            return events
        }
    }

    /// The page statement of ``readAll(after:limit:filter:)``: its SQL depends only on the shape of
    /// the filter (one prepared statement per shape), the values are bound.
    private func readAllStatement(after position: LogPosition, below horizon: UInt64, limit: Int, filter: EventFilter)
        -> (String, PostgresBindings)
    {
        var binds = PostgresBindings(capacity: 6)
        binds.append(TransactionID(position.transaction))
        binds.append(position.position)
        binds.append(TransactionID(horizon))
        binds.append(Int64(limit))
        // Only transactions below the horizon: no append can commit below it any more.
        var sql = """
            SELECT \(eventColumns) FROM \(s).events
            WHERE (transaction_id, position) > ($1, $2) AND transaction_id < $3
            """
        if let types = filter.types {
            binds.append(types.sorted())
            sql += " AND type = ANY($\(binds.count))"
        }
        if let categories = filter.categories {
            binds.append(categories.sorted())
            sql += " AND category = ANY($\(binds.count))"
        }
        if let partition = filter.partition {
            sql += " AND " + Self.partitionPredicate(partition)
        }
        sql += " ORDER BY transaction_id, position LIMIT $4"
        return (sql, binds)
    }

    public func streamVersion(_ stream: String) async throws -> Int64 {
        try limits.validate(stream: stream)
        var binds = PostgresBindings(capacity: 1)
        binds.append(stream)
        return try await run { conn in
            let rows = try await conn.executePrepared(
                "SELECT version FROM \(self.s).streams WHERE stream = $1", binds: binds, logger: self.queryLogger)
            for try await row in rows { return try row.decode(Int64.self) }
            return 0
        }
    }

    public func headPosition() async throws -> LogPosition {
        try await run { conn in
            let horizon = try await self.horizon(on: conn).horizon
            var binds = PostgresBindings(capacity: 1)
            binds.append(TransactionID(horizon))
            let rows = try await conn.executePrepared(
                """
                SELECT transaction_id, position FROM \(self.s).events
                WHERE transaction_id < $1 ORDER BY transaction_id DESC, position DESC LIMIT 1
                """, binds: binds, logger: self.queryLogger)
            for try await row in rows {
                let (transaction, position) = try row.decode((TransactionID, Int64).self)
                return LogPosition(transaction: transaction.value, position: position)
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

    /// The SQL of the horizon statement ($1: the appender lock's class).
    private var horizonSQL: String {
        // pg_stat_activity.backend_xid is a 32-bit xid: it is widened to 64 bits with the epoch
        // of the snapshot's xmax, from which a running transaction is less than 2^31 away.
        """
        WITH snapshot AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax),
        holders AS (
            SELECT l.pid, a.xact_start, a.application_name,
                   (snapshot.xmax >> 32 << 32) + a.backend_xid::text::bigint AS xid, snapshot.xmax
            FROM snapshot, pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = hashtext($1)::oid AND l.objid = 0 AND l.objsubid = 2
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
        """
    }

    /// The horizon, in a statement of its own: the statement that reads events must come after
    /// it, with a snapshot of its own (see the type's documentation).
    func horizon(on conn: PostgresConnection) async throws -> PostgresReadHorizon {
        var binds = PostgresBindings(capacity: 1)
        binds.append(appenderLockClass)
        let rows = try await conn.executePrepared(horizonSQL, binds: binds, logger: queryLogger)
        for try await row in rows {
            let (xmax, pid, xid, started, age, application) = try row.decode(
                (Int64, Int32?, Int64?, Date?, Double?, String?).self)
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
            return try await client.withConnection { conn in
                // A query on a closed connection never completes in postgres-nio 1.33 (see
                // ClosedConnectionQueryTests): the pool may hand out one the server just ended.
                guard !conn.isClosed else { throw PostgresConnection.closedError }
                return try await body(conn)
            }
        } catch {
            throw Self.storeError(error)
        }
    }

    /// The payload column: a jsonb value as `jsonb_send` writes it (format version 1, then the
    /// JSON text), or 0 followed by the bytes of a payload stored as bytes.
    static func decodePayload(_ buffer: ByteBuffer) throws -> Data {
        var buffer = buffer
        guard let format = buffer.readInteger(as: UInt8.self), format <= 1 else {
            throw PostgresStoreError.unexpectedResult("an event payload has an unknown format")
        }
        return Data(buffer.readableBytesView)
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
    /// Whether `data` is stored as jsonb (else as bytes): see ``isStorableAsJSONB(_:)``.
    var isJSON: Bool
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
        isJSON = isStorableAsJSONB(event.data)
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

/// How a queued append learns its outcome.
typealias AppendContinuation = CheckedContinuation<Result<AppendResult, any Error>, Never>

/// An append waiting in ``PostgresEventStore``'s group-commit queue.
final class PendingAppend: @unchecked Sendable {
    let rows: [EncodedEvent]
    let stream: String
    let expected: ExpectedVersion
    let commandID: UUID?
    let fingerprint: String
    let bytes: Int
    /// Set, under the queue's lock, when the append waits in the queue; resumed once with its outcome.
    var continuation: AppendContinuation?

    init(rows: [EncodedEvent], stream: String, expected: ExpectedVersion, commandID: UUID?, fingerprint: String) {
        self.rows = rows
        self.stream = stream
        self.expected = expected
        self.commandID = commandID
        self.fingerprint = fingerprint
        self.bytes = rows.reduce(0) { $0 + $1.data.count + $1.type.utf8.count + ($1.fields?.utf8.count ?? 0) + 64 }
    }
}

/// The per-event arrays of an append function's call, in its argument order.
private struct EventArrays {
    var ids: PostgresArrayParameter
    var types: PostgresArrayParameter
    var versions: PostgresArrayParameter
    var data: PostgresArrayParameter
    var bytes = PostgresArrayParameter(element: .bytea, array: .byteaArray)
    var commands = PostgresArrayParameter(element: .uuid, array: .uuidArray)
    var causations = PostgresArrayParameter(element: .uuid, array: .uuidArray)
    var correlations = PostgresArrayParameter(element: .uuid, array: .uuidArray)
    var fields = PostgresArrayParameter(element: .jsonb, array: .jsonbArray)

    /// Arrays with room for `events` events of `bytes` payload bytes in all.
    init(events: Int, bytes: Int) {
        ids = PostgresArrayParameter(element: .uuid, array: .uuidArray, capacity: events * 20)
        types = PostgresArrayParameter(element: .text, array: .textArray, capacity: events * 24)
        versions = PostgresArrayParameter(element: .int4, array: .int4Array, capacity: events * 8)
        data = PostgresArrayParameter(element: .jsonb, array: .jsonbArray, capacity: bytes + events * 5)
    }

    /// Adds `row`: its payload as jsonb, or as bytes when it is not JSON or `forceBytes` says so.
    mutating func append(_ row: EncodedEvent, forceBytes: Bool) {
        ids.append(row.id)
        types.append(row.type)
        versions.append(row.schemaVersion)
        if row.isJSON && !forceBytes {
            data.append(jsonb: row.data)
            bytes.appendNull()
        } else {
            data.appendNull()
            bytes.append(bytes: row.data)
        }
        commands.append(row.commandID)
        causations.append(row.causationID)
        correlations.append(row.correlationID)
        if let f = row.fields { fields.append(jsonb: f) } else { fields.appendNull() }
    }

    func bind(into binds: inout PostgresBindings) {
        for array in [ids, types, versions, data, bytes, commands, causations, correlations, fields] {
            binds.append(array)
        }
    }
}

/// The group-commit queue: the appends waiting, and the writers idle.
struct GroupQueue {
    var pending: [PendingAppend] = []
    /// Group writers waiting for an append, those holding a connection last.
    var idleWriters: [IdleWriter] = []
    /// Notifications sent (or tried).
    var notificationsSent = 0
    var notifications = NotificationSchedule()
    /// Group writers that have a connection now (writing, or keeping it idle).
    var writersOnConnections = 0
    /// The store is stopping: writers end once the queue is empty.
    var stopping = false
    /// The writers ended: nothing is queued any more.
    var stopped = false
    var statistics = PostgresEventStore.Statistics()
}

/// Runs the jobs of the tasks that prefer it on an event loop (a group writer's, on its
/// connection's event loop).
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// When a store's notifications go out (see ``PostgresEventStore/notifyAfterCommit(on:)``).
struct NotificationSchedule {
    /// When the last one was sent (or handed to the deferred sender).
    private(set) var lastSent: ContinuousClock.Instant?
    /// A commit has no notification after it yet: the deferred sender owes one.
    private(set) var due = false

    /// A commit that stored events was made at `now`: true when its notification goes out now
    /// (covering the commits that owed one), false when one was sent less than `interval` ago:
    /// it is owed then, and the owed notification covers every commit made before it is sent.
    mutating func committed(at now: ContinuousClock.Instant, interval: Duration) -> Bool {
        if let lastSent, now - lastSent < interval {
            due = true
            return false
        }
        // Also when one is owed: this commit's notification covers the earlier ones.
        due = false
        lastSent = now
        return true
    }

    /// True when a notification is owed: the caller sends it now, after every commit it covers.
    mutating func takeDue(at now: ContinuousClock.Instant) -> Bool {
        guard due else { return false }
        due = false
        lastSent = now
        return true
    }
}

/// A group writer waiting for appends: resumed with true to look at the queue again, with false
/// to give back the connection it has kept idle too long.
struct IdleWriter {
    let continuation: CheckedContinuation<Bool, Never>
    let holding: Bool
    let since: ContinuousClock.Instant
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

extension PostgresConnection {
    /// Runs `body`, which sends a query, only while the connection is open. postgres-nio 1.33
    /// never completes a query written to a closed channel (see ClosedConnectionQueryTests), so a
    /// query sent while the pool or the server closes the connection could wait for ever. The
    /// check and `body` run on the connection's event loop, where the channel closes (at once
    /// when the task runs there already, as a group writer does): until its first suspension
    /// `body` runs there without a break, and postgres-nio writes a query sent from the event
    /// loop at once. A query the open channel took fails when it closes.
    ///
    /// - Throws: ``closedError`` when the connection had closed, or what `body` threw.
    func unlessClosed<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        if eventLoop.inEventLoop { return try await checkOpen(then: body) }
        return try await withTaskExecutorPreference(EventLoopTaskExecutor(eventLoop)) {
            try await checkOpen(then: body)
        }
    }

    private func checkOpen<T: Sendable>(then body: () async throws -> T) async throws -> T {
        guard !isClosed else { throw Self.closedError }
        return try await body()
    }

    /// Runs `query` only while the connection is open (``unlessClosed(_:)``).
    ///
    /// - Throws: ``closedError`` when the connection had closed, or the query's error.
    func queryUnlessClosed(_ query: PostgresQuery, logger: Logger) async throws -> PostgresQueryResult {
        try await unlessClosed {
            // The future-returning query: written at once, on the event loop.
            let result: EventLoopFuture<PostgresQueryResult> = self.query(query, logger: logger)
            return try await result.get()
        }
    }

    /// What an operation on a connection that closed fails with (`08006`).
    static let closedError = PostgresStoreError.database(sqlState: "08006", message: "the connection is closed")
}
