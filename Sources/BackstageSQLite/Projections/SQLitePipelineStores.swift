import Backstage
import Foundation
import GRDB

/// The pipeline tables (checkpoints, parked events, leases, projection versions): a migration of
/// the event store's migrator, also applied on its own to a database that holds only pipeline
/// state (a projection's read-model file). `IF NOT EXISTS`: files created before the migration
/// existed already hold the tables.
enum PipelineSchema {
    static let migrationID = "backstage-pipelines-v1"

    /// Adds the pipeline migration to `migrator`.
    static func register(in migrator: inout DatabaseMigrator) {
        migrator.registerMigration(migrationID) { db in try create(db) }
    }

    /// Applies the pipeline migration to `writer` unless it already ran there.
    static func install(_ writer: any DatabaseWriter) throws {
        let applied = try writer.read { db in
            try db.tableExists("grdb_migrations")
                && (try Bool.fetchOne(
                    db, sql: "SELECT 1 FROM grdb_migrations WHERE identifier = ?", arguments: [migrationID]) ?? false)
        }
        if applied { return }
        var migrator = DatabaseMigrator()
        register(in: &migrator)
        try migrator.migrate(writer)
    }

    private static func create(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE IF NOT EXISTS backstage_checkpoints (
                    subscription TEXT PRIMARY KEY,
                    txn INTEGER NOT NULL,
                    position INTEGER NOT NULL,
                    token INTEGER NOT NULL,
                    updated_at REAL NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS backstage_parked_events (
                    subscription TEXT NOT NULL,
                    txn INTEGER NOT NULL,
                    position INTEGER NOT NULL,
                    stream TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    id BLOB NOT NULL,
                    type TEXT NOT NULL,
                    schema_version INTEGER NOT NULL,
                    data BLOB NOT NULL,
                    metadata BLOB NOT NULL,
                    recorded_at REAL NOT NULL,
                    error TEXT NOT NULL,
                    attempts INTEGER NOT NULL,
                    parked_at REAL NOT NULL,
                    PRIMARY KEY (subscription, txn, position)
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS backstage_projection_tables (
                    base_name TEXT PRIMARY KEY,
                    projection TEXT NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS backstage_leases (
                    subscription TEXT PRIMARY KEY,
                    token INTEGER NOT NULL,
                    owner TEXT NOT NULL,
                    acquired_at REAL NOT NULL,
                    expires_at REAL NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS backstage_projections (
                    name TEXT PRIMARY KEY,
                    active_version INTEGER NOT NULL,
                    updated_at REAL NOT NULL
                ) WITHOUT ROWID;
                """)
    }
}

extension LogPosition {
    /// The transaction id as SQLite stores it (a signed 64-bit integer with the same bits).
    var storedTransaction: Int64 { Int64(bitPattern: transaction) }

    init(storedTransaction: Int64, position: Int64) {
        self.init(transaction: UInt64(bitPattern: storedTransaction), position: position)
    }
}

/// Checkpoints in an SQLite database (the store's, or the one holding a projection's tables).
///
/// `commit(_:expected:new:token:in:)` runs the compare-and-set inside a caller's transaction,
/// which is how projections commit their writes and their checkpoint together.
package final class SQLiteCheckpointStore: CheckpointStore {
    /// The database.
    package let database: any DatabaseWriter

    /// Uses `database`, creating the pipeline tables if needed.
    public init(database: any DatabaseWriter) throws {
        self.database = database
        try PipelineSchema.install(database)
    }

    /// The checkpoint of `subscription`, read inside a caller's transaction.
    package static func checkpoint(_ subscription: String, in db: Database) throws -> Checkpoint? {
        guard
            let row = try Row.fetchOne(
                db.cachedStatement(
                    sql: "SELECT txn, position, token, updated_at FROM backstage_checkpoints WHERE subscription = ?"),
                arguments: [subscription])
        else { return nil }
        return Checkpoint(
            subscription: subscription, position: LogPosition(storedTransaction: row["txn"], position: row["position"]),
            token: row["token"], updatedAt: Date(timeIntervalSince1970: row["updated_at"]))
    }

    /// The compare-and-set, inside a caller's transaction. Fenced twice: the stored checkpoint's
    /// token, and the subscription's lease row in the same database (see ``SQLiteLeadership``),
    /// so a process that lost its lease cannot move the checkpoint even before the new leader's
    /// first commit.
    /// - Throws: `CheckpointError` when the stored checkpoint is not `expected` or a token is newer.
    package static func commit(
        _ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64, in db: Database
    ) throws {
        if let current = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT token FROM backstage_leases WHERE subscription = ?"),
            arguments: [subscription]), token < current
        {
            throw CheckpointError.fenced(subscription: subscription, token: token, current: current)
        }
        try checkCheckpointCommit(
            subscription, stored: checkpoint(subscription, in: db), expected: expected, token: token)
        try db.cachedStatement(
            sql: """
                INSERT INTO backstage_checkpoints (subscription, txn, position, token, updated_at)
                VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (subscription) DO UPDATE SET txn = excluded.txn, position = excluded.position,
                    token = excluded.token, updated_at = excluded.updated_at
                """
        ).execute(arguments: [
            subscription, new.storedTransaction, new.position, token, Date().timeIntervalSince1970,
        ])
    }

    public func checkpoint(_ subscription: String) async throws -> Checkpoint? {
        try await database.read { db in try Self.checkpoint(subscription, in: db) }
    }

    public func commit(_ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64) async throws {
        try await database.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try Self.commit(subscription, expected: expected, new: new, token: token, in: db)
                return .commit
            }
        }
    }

    public func checkpoints() async throws -> [Checkpoint] {
        try await database.read { db in
            try Row.fetchAll(
                db,
                sql:
                    "SELECT subscription, txn, position, token, updated_at FROM backstage_checkpoints ORDER BY subscription"
            ).map { row in
                Checkpoint(
                    subscription: row["subscription"],
                    position: LogPosition(storedTransaction: row["txn"], position: row["position"]),
                    token: row["token"], updatedAt: Date(timeIntervalSince1970: row["updated_at"]))
            }
        }
    }

    public func delete(_ subscription: String) async throws {
        try await database.write { db in
            try db.execute(sql: "DELETE FROM backstage_checkpoints WHERE subscription = ?", arguments: [subscription])
        }
    }
}

/// The parked-event (dead-letter) table in an SQLite database.
package final class SQLiteParkedEventStore: ParkedEventStore {
    /// The database.
    package let database: any DatabaseWriter

    /// Uses `database`, creating the pipeline tables if needed.
    public init(database: any DatabaseWriter) throws {
        self.database = database
        try PipelineSchema.install(database)
    }

    private static let columns = """
        subscription, txn, position, stream, version, id, type, schema_version, data, metadata, recorded_at,
        error, attempts, parked_at
        """

    private static func parked(_ row: Row) throws -> ParkedEvent {
        let metadata = try JSONDecoder().decode(EventMetadata.self, from: row["metadata"] as Data)
        let event = RecordedEvent(
            position: row["position"], transaction: UInt64(bitPattern: row["txn"] as Int64), stream: row["stream"],
            streamVersion: row["version"], id: row["id"], type: row["type"], schemaVersion: row["schema_version"],
            data: row["data"], metadata: metadata, recordedAt: Date(timeIntervalSince1970: row["recorded_at"]))
        return ParkedEvent(
            subscription: row["subscription"], event: event, error: row["error"], attempts: row["attempts"],
            parkedAt: Date(timeIntervalSince1970: row["parked_at"]))
    }

    public func park(_ parked: ParkedEvent) async throws {
        let e = parked.event
        let metadata = try JSONEncoder().encode(e.metadata)
        try await database.write { db in
            try db.execute(
                sql:
                    "INSERT OR REPLACE INTO backstage_parked_events (\(Self.columns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                arguments: [
                    parked.subscription, e.logPosition.storedTransaction, e.position, e.stream, e.streamVersion, e.id,
                    e.type, e.schemaVersion, e.data, metadata, e.recordedAt.timeIntervalSince1970, parked.error,
                    parked.attempts, parked.parkedAt.timeIntervalSince1970,
                ])
        }
    }

    public func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent] {
        try await database.read { db in
            if let subscription {
                return try Row.fetchAll(
                    db,
                    sql:
                        "SELECT \(Self.columns) FROM backstage_parked_events WHERE subscription = ? ORDER BY txn, position LIMIT ?",
                    arguments: [subscription, max(limit, 0)]
                ).map(Self.parked)
            }
            return try Row.fetchAll(
                db,
                sql: "SELECT \(Self.columns) FROM backstage_parked_events ORDER BY txn, position, subscription LIMIT ?",
                arguments: [max(limit, 0)]
            ).map(Self.parked)
        }
    }

    public func parkedEvent(subscription: String, position: LogPosition) async throws -> ParkedEvent? {
        try await database.read { db in
            try Row.fetchOne(
                db,
                sql:
                    "SELECT \(Self.columns) FROM backstage_parked_events WHERE subscription = ? AND txn = ? AND position = ?",
                arguments: [subscription, position.storedTransaction, position.position]
            ).map(Self.parked)
        }
    }

    /// Removes a parked event inside a caller's transaction; true when there was one.
    package static func remove(subscription: String, position: LogPosition, in db: Database) throws -> Bool {
        try db.execute(
            sql: "DELETE FROM backstage_parked_events WHERE subscription = ? AND txn = ? AND position = ?",
            arguments: [subscription, position.storedTransaction, position.position])
        return db.changesCount > 0
    }

    public func update(_ parked: ParkedEvent, expectedAttempts: Int) async throws -> Bool {
        let position = parked.event.logPosition
        return try await database.write { db in
            try db.execute(
                sql: """
                    UPDATE backstage_parked_events SET error = ?, attempts = ?, parked_at = ?
                    WHERE subscription = ? AND txn = ? AND position = ? AND attempts = ?
                    """,
                arguments: [
                    parked.error, parked.attempts, parked.parkedAt.timeIntervalSince1970, parked.subscription,
                    position.storedTransaction, position.position, expectedAttempts,
                ])
            return db.changesCount > 0
        }
    }

    public func remove(subscription: String, position: LogPosition) async throws -> ParkedEvent? {
        try await database.write { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql:
                        "SELECT \(Self.columns) FROM backstage_parked_events WHERE subscription = ? AND txn = ? AND position = ?",
                    arguments: [subscription, position.storedTransaction, position.position])
            else { return nil }
            _ = try Self.remove(subscription: subscription, position: position, in: db)
            return try Self.parked(row)
        }
    }
}

extension ProjectionCommit {
    /// Performs the commit inside `db`'s transaction: the checkpoint's compare-and-set, or the
    /// removal of the replayed parked event (`PipelineError.parkedEventNotFound` when it is gone).
    func perform(in db: Database) throws {
        switch self {
        case .checkpoint(let subscription, let expected, let new, let token):
            try SQLiteCheckpointStore.commit(subscription, expected: expected, new: new, token: token, in: db)
        case .replay(let subscription, let position):
            guard try SQLiteParkedEventStore.remove(subscription: subscription, position: position, in: db) else {
                throw PipelineError.parkedEventNotFound(subscription: subscription, position: position)
            }
        }
    }
}
