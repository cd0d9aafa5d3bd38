import Backstage
import Foundation
import GRDB

/// The process-manager tables (instances, command outbox), created on first use. Kept apart from
/// ``PipelineSchema`` so it can become its own migration.
enum ProcessSchema {
    static func install(_ writer: any DatabaseWriter) throws {
        try writer.write { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS backstage_process_instances (
                        process TEXT NOT NULL,
                        key TEXT NOT NULL,
                        state BLOB NOT NULL,
                        updated_at REAL NOT NULL,
                        PRIMARY KEY (process, key)
                    ) WITHOUT ROWID;
                    CREATE TABLE IF NOT EXISTS backstage_command_outbox (
                        id BLOB PRIMARY KEY,
                        process TEXT NOT NULL,
                        instance TEXT NOT NULL,
                        command TEXT NOT NULL,
                        data BLOB NOT NULL,
                        causation_id BLOB,
                        correlation_id BLOB,
                        due_at REAL NOT NULL,
                        cancel_key TEXT,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        last_error TEXT,
                        created_at REAL NOT NULL
                    );
                    CREATE INDEX IF NOT EXISTS backstage_command_outbox_due ON backstage_command_outbox (due_at, created_at);
                    CREATE INDEX IF NOT EXISTS backstage_command_outbox_cancel ON backstage_command_outbox (cancel_key)
                        WHERE cancel_key IS NOT NULL;
                    CREATE INDEX IF NOT EXISTS backstage_command_outbox_instance ON backstage_command_outbox (process, instance);
                    """)
        }
    }
}

/// Process instances and the command outbox in an SQLite database (the store's), next to the
/// checkpoints: a process manager's batch commits its instances, its commands and its checkpoint
/// in one transaction.
///
/// SQLite runs in one process at a time (see `SQLiteLeadership`), so the scheduler does not
/// claim rows; a repeated dispatch after a crash is harmless (command idempotency).
public final class SQLiteProcessStore: ProcessStore, ProcessStoreBackend {
    /// The database.
    package let database: any DatabaseWriter
    private let checkpointStore: SQLiteCheckpointStore
    private let parkedStore: SQLiteParkedEventStore

    /// Uses `database` (the event store's `database`), creating the tables if needed.
    package init(database: any DatabaseWriter) throws {
        self.database = database
        self.checkpointStore = try SQLiteCheckpointStore(database: database)
        self.parkedStore = try SQLiteParkedEventStore(database: database)
        try ProcessSchema.install(database)
    }

    /// Uses the database of `store`.
    public convenience init(store: SQLiteEventStore) throws {
        try self.init(database: store.database)
    }

    /// Its operations.
    public var storage: ProcessStorage { ProcessStorage(self) }

    /// Its checkpoints, in the same database.
    package var checkpoints: any CheckpointStore { checkpointStore }
    /// Its parked events, in the same database.
    package var parkedEvents: (any ParkedEventStore)? { parkedStore }

    private static let columns = """
        id, process, instance, command, data, causation_id, correlation_id, due_at, cancel_key, attempts,
        last_error, created_at
        """

    private static func command(_ row: Row) -> OutboxCommand {
        OutboxCommand(
            id: row[0], process: row[1], instance: row[2], commandName: row[3], data: row[4], causationID: row[5],
            correlationID: row[6], dueAt: Date(timeIntervalSince1970: row[7]), cancelKey: row[8], attempts: row[9],
            lastError: row[10], createdAt: Date(timeIntervalSince1970: row[11]))
    }

    static func insert(_ commands: [OutboxCommand], in db: Database) throws {
        let statement = try db.cachedStatement(
            sql: """
                INSERT INTO backstage_command_outbox (\(columns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO NOTHING
                """)
        for c in commands {
            try statement.execute(arguments: [
                c.id, c.process, c.instance, c.commandName, c.data, c.causationID, c.correlationID,
                c.dueAt.timeIntervalSince1970, c.cancelKey, c.attempts, c.lastError, c.createdAt.timeIntervalSince1970,
            ])
        }
    }

    package func transact(
        process: String, keys: Set<String>, commit: ProjectionCommit,
        compute: @Sendable ([String: Data]) throws -> ProcessChanges
    ) async throws {
        try await database.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try commit.perform(in: db)
                var loaded: [String: Data] = [:]
                let select = try db.cachedStatement(
                    sql: "SELECT state FROM backstage_process_instances WHERE process = ? AND key = ?")
                for key in keys {
                    if let state = try Data.fetchOne(select, arguments: [process, key]) { loaded[key] = state }
                }
                let changes = try compute(loaded)
                let now = Date().timeIntervalSince1970
                for key in changes.deletes {
                    try db.execute(
                        sql: "DELETE FROM backstage_process_instances WHERE process = ? AND key = ?",
                        arguments: [process, key])
                }
                for (key, state) in changes.upserts {
                    try db.cachedStatement(
                        sql: """
                            INSERT INTO backstage_process_instances (process, key, state, updated_at) VALUES (?, ?, ?, ?)
                            ON CONFLICT (process, key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at
                            """
                    ).execute(arguments: [process, key, state, now])
                }
                for key in changes.cancels {
                    try db.execute(sql: "DELETE FROM backstage_command_outbox WHERE cancel_key = ?", arguments: [key])
                }
                try Self.insert(changes.commands, in: db)
                return .commit
            }
        }
    }

    package func instances(process: String) async throws -> [StoredProcessInstance] {
        try await database.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT key, state, updated_at FROM backstage_process_instances WHERE process = ? ORDER BY key",
                arguments: [process]
            ).map {
                StoredProcessInstance(
                    process: process, key: $0[0], state: $0[1], updatedAt: Date(timeIntervalSince1970: $0[2]))
            }
        }
    }

    package func deleteInstance(process: String, key: String) async throws {
        try await database.write { db in
            try Self.deleteInstance(process: process, key: key, in: db)
        }
    }

    static func deleteInstance(process: String, key: String, in db: Database) throws {
        try db.execute(
            sql: "DELETE FROM backstage_process_instances WHERE process = ? AND key = ?", arguments: [process, key])
        try db.execute(
            sql: "DELETE FROM backstage_command_outbox WHERE process = ? AND instance = ?", arguments: [process, key])
    }

    package func schedule(_ commands: [OutboxCommand]) async throws {
        try await database.write { db in try Self.insert(commands, in: db) }
    }

    package func cancel(key: String) async throws -> Int {
        try await database.write { db in
            try db.execute(sql: "DELETE FROM backstage_command_outbox WHERE cancel_key = ?", arguments: [key])
            return db.changesCount
        }
    }

    package func pending(limit: Int) async throws -> [OutboxCommand] {
        try await database.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT \(Self.columns) FROM backstage_command_outbox ORDER BY due_at, created_at, id LIMIT ?",
                arguments: [max(limit, 0)]
            ).map(Self.command)
        }
    }

    package func nextDue() async throws -> Date? {
        try await database.read { db in
            try Double.fetchOne(db, sql: "SELECT min(due_at) FROM backstage_command_outbox")
                .map { Date(timeIntervalSince1970: $0) }
        }
    }

    package func dispatchDue(now: Date, limit: Int, dispatch: @Sendable (OutboxCommand) async -> OutboxOutcome)
        async throws -> Int
    {
        // One process: read the due rows, dispatch each (its own transactions), then record the outcome.
        let due = try await database.read { db in
            try Row.fetchAll(
                db,
                sql:
                    "SELECT \(Self.columns) FROM backstage_command_outbox WHERE due_at <= ? ORDER BY due_at, created_at, id LIMIT ?",
                arguments: [now.timeIntervalSince1970, max(limit, 0)]
            ).map(Self.command)
        }
        for command in due {
            let outcome = await dispatch(command)
            try await database.write { db in
                switch outcome {
                case .done:
                    try db.execute(sql: "DELETE FROM backstage_command_outbox WHERE id = ?", arguments: [command.id])
                case .retry(let at, let error):
                    try db.execute(
                        sql:
                            "UPDATE backstage_command_outbox SET due_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
                        arguments: [at.timeIntervalSince1970, error, command.id])
                case .stopInstance:
                    try db.execute(sql: "DELETE FROM backstage_command_outbox WHERE id = ?", arguments: [command.id])
                    if !command.process.isEmpty {
                        try Self.deleteInstance(process: command.process, key: command.instance, in: db)
                    }
                }
            }
        }
        return due.count
    }
}
