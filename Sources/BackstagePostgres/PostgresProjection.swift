import Backstage
import Foundation
import Logging
import PostgresNIO

/// A read model kept in your own PostgreSQL tables: you create the tables and write the rows
/// with the connection you are given; Backstage runs the writes of each batch and the checkpoint
/// compare-and-set (fenced by the lease token) in one transaction, so every event takes effect
/// exactly once, whichever process leads the subscription.
///
/// Tables are versioned: version N of a table `tickets` is `<schema>.tickets_vN`, and a view
/// `<schema>.tickets` shows the active version to readers. A rebuild fills version N+1 while N
/// keeps serving, then the view switches in one transaction. Always write through
/// `PostgresProjectionTables.table(_:)`.
///
/// ```swift
/// struct TicketsReadModel: PostgresReadModel {
///     let name = "tickets"
///     let tables = ["tickets"]
///     func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
///         try await connection.query(
///             "CREATE TABLE \(unescaped: try tables.table("tickets")) (id text PRIMARY KEY, show text)", logger: logger)
///     }
///     func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
///         if let added = try event.decode(as: TicketAdded.self) {
///             try await connection.query(
///                 "INSERT INTO \(unescaped: try tables.table("tickets")) VALUES (\(added.ticketID), \(added.showID))",
///                 logger: logger)
///         }
///     }
/// }
/// ```
public protocol PostgresReadModel: Sendable {
    /// The projection's name (`[A-Za-z0-9_.-]`).
    var name: String { get }
    /// The base names of the tables it owns (`[a-z_][a-z0-9_]*`, at most 48 characters).
    var tables: [String] { get }
    /// Which events it reads; evaluated in the database. Defaults to every event.
    var filter: EventFilter { get }
    /// Creates the tables (and indexes) of one version, named by `tables`, inside a transaction.
    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws
    /// Applies one event inside the batch's transaction. Throw to roll the batch back.
    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws
    /// Applies a batch of events, in log order, inside the batch's transaction (which commits
    /// once, with the checkpoint). Implement it to write a batch with as few statements as the
    /// read model allows (for example one upsert from arrays); the default applies each event
    /// with ``apply(_:on:tables:)-(RecordedEvent,_,_)``. Throw to roll the batch back.
    func apply(_ events: [RecordedEvent], on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
}

extension PostgresReadModel {
    /// Every event.
    public var filter: EventFilter { .all }

    /// Applies each event in order.
    public func apply(_ events: [RecordedEvent], on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        for event in events { try await apply(event, on: connection, tables: tables) }
    }
}

/// A ``PostgresReadModel`` that consumes one `EventFamily` and receives typed `Envelope`s.
///
/// Its filter is derived from the family (upcast type names included) and each event is decoded
/// once by the family's shared codec, upcasters included. Run it with ``PostgresProjection``.
///
/// ```swift
/// struct SalesReadModel: TypedPostgresReadModel {
///     let name = "sales"
///     let tables = ["sales"]
///     func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
///         try await connection.query(
///             "CREATE TABLE \(unescaped: try tables.table("sales")) (show text PRIMARY KEY, total bigint)", logger: logger)
///     }
///     func apply(_ envelope: Envelope<ShowEvent>, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
///         guard case .ticketSold(let sold) = envelope.event else { return }
///         let table = try tables.table("sales")
///         try await connection.query(
///             "INSERT INTO \(unescaped: table) VALUES (\(sold.showID), \(sold.price)) ON CONFLICT (show) DO UPDATE SET total = \(unescaped: table).total + excluded.total",
///             logger: logger)
///     }
/// }
/// ```
public protocol TypedPostgresReadModel: PostgresReadModel {
    /// The events the read model consumes.
    associatedtype Family: EventFamily
    /// What happens to an event the family cannot read. Defaults to `DecodeFailurePolicy.fail`.
    var decodeFailure: DecodeFailurePolicy { get }
    /// Applies one event inside the batch's transaction. Throw to roll the batch back.
    func apply(_ envelope: Envelope<Family>, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
}

extension TypedPostgresReadModel {
    /// Fail: an undecodable event goes through the projection's failure policy.
    public var decodeFailure: DecodeFailurePolicy { .fail }

    /// The family's type names (upcast ones included); every event when the family is invalid
    /// (each event then fails with the codec's error).
    public var filter: EventFilter { (try? EventCodec<Family>.shared().filter) ?? .all }

    /// Decodes the event with the family's codec and applies the envelope.
    public func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        guard let envelope = try EventCodec<Family>.shared().envelope(event, policy: decodeFailure, subscription: name)
        else { return }
        try await apply(envelope, on: connection, tables: tables)
    }
}

/// The table names of one version of a PostgreSQL projection: `ProjectionTables` with the
/// store's schema.
public typealias PostgresProjectionTables = ProjectionTables

extension ProjectionTables {
    /// The names of `version` of the tables `baseNames` in `schema`.
    init(schema: PostgresSchemaName, version: Int, baseNames: [String]) {
        self.init(version: version, baseNames: baseNames, schema: schema.rawValue)
    }
}

func isLowerIdentifier(_ name: String) -> Bool { isTableIdentifier(name, lowercase: true) }

/// Runs a ``PostgresReadModel`` as a `Projection`: its tables, checkpoints and parked events live
/// in the store's schema, so several processes can run it (one leads at a time, see
/// ``PostgresLeadership``).
public final class PostgresProjection<Model: PostgresReadModel>: Projection {
    /// The read model.
    public let model: Model
    /// The store whose schema holds the tables.
    public let store: PostgresEventStore
    /// Batching, failure policy, consistency.
    public let options: ProjectionOptions
    private let checkpointStore: PostgresCheckpointStore
    private let parkedStore: PostgresParkedEventStore

    /// Creates the projection in `store`'s schema.
    /// - Throws: `ProjectionError.invalidTableName(_:)` or `PipelineError.invalidName`.
    public init(_ model: Model, store: PostgresEventStore, options: ProjectionOptions = ProjectionOptions()) throws {
        try validateSubscriptionName(model.name)
        for table in model.tables where !isLowerIdentifier(table) {
            throw ProjectionError.invalidTableName(table)
        }
        self.model = model
        self.store = store
        self.options = options
        self.checkpointStore = PostgresCheckpointStore(store: store)
        self.parkedStore = PostgresParkedEventStore(store: store)
    }

    /// The projection's name.
    public var name: String { model.name }
    /// Which events it reads.
    public var filter: EventFilter { model.filter }
    /// Its checkpoints, in the store's schema.
    public var checkpoints: any CheckpointStore { checkpointStore }
    /// Its parked events, in the store's schema.
    public var parkedEvents: (any ParkedEventStore)? { parkedStore }

    /// The table names of `version`.
    public func tables(version: Int) -> PostgresProjectionTables {
        PostgresProjectionTables(schema: store.schema, version: version, baseNames: model.tables)
    }

    /// The table names readers see now (nil before the projection first ran).
    public func activeTables() async throws -> PostgresProjectionTables? {
        try await store.run { conn in try await self.activeVersion(on: conn).map { self.tables(version: $0) } }
    }

    private func activeVersion(on conn: PostgresConnection) async throws -> Int? {
        let rows = try await conn.query(
            "SELECT active_version FROM \(unescaped: store.s).projections WHERE name = \(model.name)",
            logger: store.queryLogger)
        for try await version in rows.decode(Int32.self) { return Int(version) }
        return nil
    }

    /// Serialises the DDL of this projection across processes (until the transaction ends).
    private func lockDDL(on conn: PostgresConnection) async throws {
        _ = try await conn.query(
            "SELECT pg_advisory_xact_lock(hashtext(\("backstage.projection.\(store.s)")), hashtext(\(model.name)))",
            logger: store.queryLogger)
    }

    private func relationKind(_ name: String, on conn: PostgresConnection) async throws -> String? {
        let rows = try await conn.query(
            """
            SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = \(store.s) AND c.relname = \(name)
            """, logger: store.queryLogger)
        for try await kind in rows.decode(String.self) { return kind }
        return nil
    }

    private func createIfMissing(_ version: Int, on conn: PostgresConnection) async throws {
        let names = tables(version: version)
        var missing = 0
        for base in names.baseNames where try await relationKind("\(base)_v\(version)", on: conn) == nil {
            missing += 1
        }
        if missing > 0 { try await model.createTables(on: conn, tables: names) }
    }

    private func pointViews(at version: Int, on conn: PostgresConnection) async throws {
        let names = tables(version: version)
        for base in names.baseNames {
            if let kind = try await relationKind(base, on: conn), kind != "v" {
                throw ProjectionError.nameTaken(base)
            }
            _ = try await conn.query(
                PostgresQuery(unsafeSQL: "DROP VIEW IF EXISTS \(try names.view(base))"), logger: store.queryLogger)
            _ = try await conn.query(
                PostgresQuery(
                    unsafeSQL: "CREATE VIEW \(try names.view(base)) AS SELECT * FROM \(try names.table(base))"),
                logger: store.queryLogger)
        }
    }

    /// Records that the read model's tables belong to it (in every process's first
    /// ``activeVersion()``), so two read models declaring one table fail instead of sharing it.
    private func claimTables(on conn: PostgresConnection) async throws {
        guard !model.tables.isEmpty else { return }
        let owners = try await PostgresTransaction.run(on: conn, logger: store.queryLogger) { conn in
            _ = try await conn.query(
                "SELECT pg_advisory_xact_lock(hashtext(\("backstage.projection_tables")), hashtext(\(self.store.s)))",
                logger: self.store.queryLogger)
            _ = try await conn.query(
                PostgresQuery(
                    unsafeSQL: """
                        CREATE TABLE IF NOT EXISTS \(self.store.s).projection_tables (
                            base_name text PRIMARY KEY, projection text NOT NULL)
                        """), logger: self.store.queryLogger)
            var owners: [(String, String)] = []
            for table in self.model.tables {
                let rows = try await conn.query(
                    """
                    INSERT INTO \(unescaped: self.store.s).projection_tables (base_name, projection)
                    VALUES (\(table), \(self.model.name)) ON CONFLICT (base_name) DO UPDATE SET base_name = excluded.base_name
                    RETURNING projection
                    """, logger: self.store.queryLogger)
                for try await owner in rows.decode(String.self) { owners.append((table, owner)) }
            }
            return (owners, true)
        }
        for (table, owner) in owners where owner != model.name {
            throw ProjectionError.tableOwned(table, owner: owner, projection: model.name)
        }
    }

    public func activeVersion() async throws -> Int {
        try await store.run { conn in
            try await self.claimTables(on: conn)
            if let version = try await self.activeVersion(on: conn) { return version }
            return try await PostgresTransaction.run(on: conn, logger: self.store.queryLogger) { conn in
                try await self.lockDDL(on: conn)
                if let version = try await self.activeVersion(on: conn) { return (version, true) }
                try await self.createIfMissing(1, on: conn)
                try await self.pointViews(at: 1, on: conn)
                _ = try await conn.query(
                    "INSERT INTO \(unescaped: self.store.s).projections (name, active_version) VALUES (\(self.model.name), 1)",
                    logger: self.store.queryLogger)
                return (1, true)
            }
        }
    }

    public func prepare(version: Int) async throws {
        try await store.run { conn in
            try await PostgresTransaction.run(on: conn, logger: self.store.queryLogger) { conn in
                try await self.lockDDL(on: conn)
                try await self.createIfMissing(version, on: conn)
                return ((), true)
            }
        }
    }

    public func apply(_ events: [RecordedEvent], version: Int, commit: ProjectionCommit) async throws {
        let names = tables(version: version)
        try await store.run { conn in
            try await PostgresTransaction.run(on: conn, logger: self.store.queryLogger) { conn in
                // The compare-and-set first: a runner of a dropped version (or a stale one) stops at
                // its checkpoint conflict before touching any table.
                try await commit.perform(store: self.store, on: conn)
                try await self.model.apply(events, on: conn, tables: names)
                return ((), true)
            }
        }
    }

    public func activate(version: Int, replacing old: Int) async throws {
        try await store.run { conn in
            try await PostgresTransaction.run(on: conn, logger: self.store.queryLogger) { conn in
                try await self.lockDDL(on: conn)
                try await self.createIfMissing(version, on: conn)
                try await self.pointViews(at: version, on: conn)
                let version32 = Int32(version)
                _ = try await conn.query(
                    """
                    INSERT INTO \(unescaped: self.store.s).projections (name, active_version) VALUES (\(self.model.name), \(version32))
                    ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version, updated_at = now()
                    """, logger: self.store.queryLogger)
                guard old != version else { return ((), true) }
                let oldNames = self.tables(version: old)
                for base in oldNames.baseNames {
                    _ = try await conn.query(
                        PostgresQuery(unsafeSQL: "DROP TABLE IF EXISTS \(try oldNames.table(base))"),
                        logger: self.store.queryLogger)
                }
                let oldSubscription = projectionSubscription(self.model.name, version: old)
                _ = try await conn.query(
                    "DELETE FROM \(unescaped: self.store.s).checkpoints WHERE subscription = \(oldSubscription)",
                    logger: self.store.queryLogger)
                _ = try await conn.query(
                    "DELETE FROM \(unescaped: self.store.s).parked_events WHERE subscription = \(oldSubscription)",
                    logger: self.store.queryLogger)
                return ((), true)
            }
        }
    }
}
