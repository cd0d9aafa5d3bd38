import Backstage
import Foundation
import GRDB

/// A read model kept in your own SQLite tables: you create the tables and write the rows with
/// GRDB; Backstage runs the writes of each batch and the checkpoint compare-and-set in one
/// transaction, so every event takes effect exactly once, even across crashes.
///
/// Tables are versioned: version N of a table `tickets` is `tickets_vN`, and a view `tickets`
/// shows the active version to readers. A rebuild fills version N+1 while N keeps serving, then
/// the view switches in one transaction. Always write through `ProjectionTables.table(_:)`.
///
/// ```swift
/// struct TicketsReadModel: SQLiteReadModel {
///     let name = "tickets"
///     let tables = ["tickets"]
///     func createTables(in db: Database, tables: ProjectionTables) throws {
///         try db.execute(sql: "CREATE TABLE \(try tables.table("tickets")) (id TEXT PRIMARY KEY, show TEXT)")
///     }
///     func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
///         if let added = try event.decode(as: TicketAdded.self) {
///             try db.execute(sql: "INSERT INTO \(try tables.table("tickets")) VALUES (?, ?)",
///                            arguments: [added.ticketID, added.showID])
///         }
///     }
/// }
/// ```
public protocol SQLiteReadModel: Sendable {
    /// The projection's name (`[A-Za-z0-9_.-]`).
    var name: String { get }
    /// The base names of the tables it owns (`[A-Za-z_][A-Za-z0-9_]*`, at most 48 characters).
    var tables: [String] { get }
    /// Which events it reads; evaluated in the database. Defaults to every event.
    var filter: EventFilter { get }
    /// Creates the tables (and indexes) of one version, named by `tables`.
    func createTables(in db: Database, tables: ProjectionTables) throws
    /// Applies one event, inside the batch's transaction. Throw to roll the batch back.
    func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws
}

extension SQLiteReadModel {
    /// Every event.
    public var filter: EventFilter { .all }
}

/// An ``SQLiteReadModel`` that consumes one `EventFamily` and receives typed `Envelope`s.
///
/// Its filter is derived from the family (upcast type names included) and each event is decoded
/// once by the family's shared codec, upcasters included. Run it with ``SQLiteProjection``.
///
/// ```swift
/// struct SalesReadModel: TypedSQLiteReadModel {
///     let name = "sales"
///     let tables = ["sales"]
///     func createTables(in db: Database, tables: ProjectionTables) throws {
///         try db.execute(sql: "CREATE TABLE \(try tables.table("sales")) (show TEXT PRIMARY KEY, total INTEGER)")
///     }
///     func apply(_ envelope: Envelope<ShowEvent>, in db: Database, tables: ProjectionTables) throws {
///         guard case .ticketSold(let sold) = envelope.event else { return }
///         try db.execute(sql: "INSERT INTO \(try tables.table("sales")) VALUES (?, ?) ON CONFLICT (show) DO UPDATE SET total = total + excluded.total",
///                        arguments: [sold.showID, sold.price])
///     }
/// }
/// ```
public protocol TypedSQLiteReadModel: SQLiteReadModel {
    /// The events the read model consumes.
    associatedtype Family: EventFamily
    /// What happens to an event the family cannot read. Defaults to `DecodeFailurePolicy.fail`.
    var decodeFailure: DecodeFailurePolicy { get }
    /// Applies one event, inside the batch's transaction. Throw to roll the batch back.
    func apply(_ envelope: Envelope<Family>, in db: Database, tables: ProjectionTables) throws
}

extension TypedSQLiteReadModel {
    /// Fail: an undecodable event goes through the projection's failure policy.
    public var decodeFailure: DecodeFailurePolicy { .fail }

    /// The family's type names (upcast ones included); every event when the family is invalid
    /// (each event then fails with the codec's error).
    public var filter: EventFilter { (try? EventCodec<Family>.shared().filter) ?? .all }

    /// Decodes the event with the family's codec and applies the envelope.
    public func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
        guard let envelope = try EventCodec<Family>.shared().envelope(event, policy: decodeFailure, subscription: name)
        else { return }
        try apply(envelope, in: db, tables: tables)
    }
}

func isPlainIdentifier(_ name: String) -> Bool { isTableIdentifier(name, lowercase: false) }

/// Runs an ``SQLiteReadModel`` as a `Projection`: checkpoints and parked events live in the
/// same database as its tables.
public final class SQLiteProjection<Model: SQLiteReadModel>: Projection {
    /// The read model.
    package let model: Model
    /// The database holding the tables (the store's `database`, or another file).
    package let database: any DatabaseWriter
    /// Batching, failure policy, consistency.
    public let options: ProjectionOptions
    private let checkpointStore: SQLiteCheckpointStore
    private let parkedStore: SQLiteParkedEventStore

    /// Creates the projection over `database`, creating Backstage's pipeline tables if needed.
    /// Records in the database that the read model's tables belong to it.
    /// - Throws: `ProjectionError.invalidTableName(_:)`, `ProjectionError.tableOwned(_:owner:projection:)`
    ///   when another projection declared one of its tables, `PipelineError.invalidName`, or a database error.
    public init(_ model: Model, database: any DatabaseWriter, options: ProjectionOptions = ProjectionOptions()) throws {
        try validateSubscriptionName(model.name)
        for table in model.tables where !isPlainIdentifier(table) {
            throw ProjectionError.invalidTableName(table)
        }
        self.model = model
        self.database = database
        self.options = options
        self.checkpointStore = try SQLiteCheckpointStore(database: database)
        self.parkedStore = try SQLiteParkedEventStore(database: database)
        try database.write { db in
            for table in model.tables {
                try db.execute(
                    sql:
                        "INSERT INTO backstage_projection_tables (base_name, projection) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    arguments: [table.lowercased(), model.name])
                let owner = try String.fetchOne(
                    db, sql: "SELECT projection FROM backstage_projection_tables WHERE base_name = ?",
                    arguments: [table.lowercased()])
                if let owner, owner != model.name {
                    throw ProjectionError.tableOwned(table, owner: owner, projection: model.name)
                }
            }
        }
    }

    /// The projection's name.
    public var name: String { model.name }
    /// Which events it reads.
    public var filter: EventFilter { model.filter }
    /// Its checkpoints, in its database.
    public var checkpoints: any CheckpointStore { checkpointStore }
    /// Its parked events, in its database.
    public var parkedEvents: (any ParkedEventStore)? { parkedStore }

    /// The table names of `version`.
    package func tables(version: Int) -> ProjectionTables {
        ProjectionTables(version: version, baseNames: model.tables)
    }

    /// The table names readers see now, read inside a caller's transaction (nil before the
    /// projection first ran). Readers may also query the views named after the base names.
    public func activeTables(_ db: Database) throws -> ProjectionTables? {
        try Int.fetchOne(
            db, sql: "SELECT active_version FROM backstage_projections WHERE name = ?", arguments: [model.name]
        ).map { tables(version: $0) }
    }

    private func createIfMissing(_ version: Int, in db: Database) throws {
        let names = tables(version: version)
        let existing = try names.baseNames.filter { try db.tableExists(try names.table($0)) }
        if existing.count < names.baseNames.count { try model.createTables(in: db, tables: names) }
    }

    private func pointViews(at version: Int, in db: Database) throws {
        let names = tables(version: version)
        for base in names.baseNames {
            if try db.tableExists(base) { throw ProjectionError.nameTaken(base) }
            try db.execute(sql: "DROP VIEW IF EXISTS \(base)")
            try db.execute(sql: "CREATE VIEW \(base) AS SELECT * FROM \(try names.table(base))")
        }
    }

    public func activeVersion() async throws -> Int {
        try await database.write { db in
            if let version = try self.activeTables(db)?.version { return version }
            try self.createIfMissing(1, in: db)
            try self.pointViews(at: 1, in: db)
            try db.execute(
                sql: "INSERT INTO backstage_projections (name, active_version, updated_at) VALUES (?, 1, ?)",
                arguments: [self.model.name, Date().timeIntervalSince1970])
            return 1
        }
    }

    public func prepare(version: Int) async throws {
        try await database.write { db in try self.createIfMissing(version, in: db) }
    }

    public func apply(_ events: [RecordedEvent], version: Int, commit: ProjectionCommit) async throws {
        let names = tables(version: version)
        try await database.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                // The compare-and-set first: a runner of a dropped version (or a stale one) stops at
                // its checkpoint conflict before touching any table.
                try commit.perform(in: db)
                for event in events { try self.model.apply(event, in: db, tables: names) }
                return .commit
            }
        }
    }

    public func activate(version: Int, replacing old: Int) async throws {
        try await database.write { db in
            try self.createIfMissing(version, in: db)
            try self.pointViews(at: version, in: db)
            try db.execute(
                sql: """
                    INSERT INTO backstage_projections (name, active_version, updated_at) VALUES (?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version, updated_at = excluded.updated_at
                    """, arguments: [self.model.name, version, Date().timeIntervalSince1970])
            guard old != version else { return }
            let oldNames = self.tables(version: old)
            for base in oldNames.baseNames { try db.execute(sql: "DROP TABLE IF EXISTS \(try oldNames.table(base))") }
            let oldSubscription = projectionSubscription(self.model.name, version: old)
            try db.execute(
                sql: "DELETE FROM backstage_checkpoints WHERE subscription = ?", arguments: [oldSubscription])
            try db.execute(
                sql: "DELETE FROM backstage_parked_events WHERE subscription = ?", arguments: [oldSubscription])
        }
    }
}
