import Backstage
import Foundation
import Logging
import PostgresNIO

/// Process instances and the command outbox in the store's schema (migration 5), next to the
/// checkpoints: a process manager's batch commits its instances, its commands and its fenced
/// checkpoint in one transaction, whichever process leads it.
///
/// Several processes may run a `CommandScheduler` on the same schema: each due command is claimed
/// with `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction that stays open while the command is
/// dispatched and deletes the row before it commits, so exactly one process dispatches it; a
/// process that dies mid-dispatch releases the row (its transaction rolls back), and the next
/// dispatch, with the same command id, returns the stored result.
public final class PostgresProcessStore: ProcessStore, ProcessStoreBackend {
    /// The store whose schema holds the tables.
    package let store: PostgresEventStore
    private let checkpointStore: PostgresCheckpointStore
    private let parkedStore: PostgresParkedEventStore

    /// Uses the tables of `store`'s schema.
    public init(store: PostgresEventStore) {
        self.store = store
        self.checkpointStore = PostgresCheckpointStore(store: store)
        self.parkedStore = PostgresParkedEventStore(store: store)
    }

    /// Its operations.
    public var storage: ProcessStorage { ProcessStorage(self) }

    /// Its checkpoints, in the store's schema.
    package var checkpoints: any CheckpointStore { checkpointStore }
    /// Its parked events, in the store's schema.
    package var parkedEvents: (any ParkedEventStore)? { parkedStore }

    private var s: String { store.s }
    private var logger: Logger { store.queryLogger }

    private static let columns = """
        id, process, instance, command, data::text, causation_id, correlation_id, due_at, cancel_key, attempts,
        last_error, created_at
        """

    private func commands(_ rows: PostgresRowSequence) async throws -> [OutboxCommand] {
        var all: [OutboxCommand] = []
        for try await (id, process, instance, command, data, causation, correlation, due, key, attempts, error, created)
            in rows.decode(
                (UUID, String, String, String, String, UUID?, UUID?, Date, String?, Int32, String?, Date).self)
        {
            all.append(
                OutboxCommand(
                    id: id, process: process, instance: instance, commandName: command, data: Data(data.utf8),
                    causationID: causation, correlationID: correlation, dueAt: due, cancelKey: key,
                    attempts: Int(attempts), lastError: error, createdAt: created))
        }
        return all
    }

    private func insert(_ commands: [OutboxCommand], on conn: PostgresConnection) async throws {
        for c in commands {
            let json = String(decoding: c.data, as: UTF8.self)
            let attempts = Int32(c.attempts)
            _ = try await conn.query(
                """
                INSERT INTO \(unescaped: s).command_outbox
                    (id, process, instance, command, data, causation_id, correlation_id, due_at, cancel_key, attempts,
                     last_error, created_at)
                VALUES (\(c.id), \(c.process), \(c.instance), \(c.commandName), \(json)::jsonb, \(c.causationID),
                    \(c.correlationID), \(c.dueAt), \(c.cancelKey), \(attempts), \(c.lastError), \(c.createdAt))
                ON CONFLICT (id) DO NOTHING
                """, logger: logger)
        }
    }

    private func deleteInstance(process: String, key: String, on conn: PostgresConnection) async throws {
        _ = try await conn.query(
            "DELETE FROM \(unescaped: s).process_instances WHERE process = \(process) AND key = \(key)", logger: logger)
        _ = try await conn.query(
            "DELETE FROM \(unescaped: s).command_outbox WHERE process = \(process) AND instance = \(key)",
            logger: logger)
    }

    package func transact(
        process: String, keys: Set<String>, commit: ProjectionCommit,
        compute: @Sendable ([String: Data]) throws -> ProcessChanges
    ) async throws {
        try await store.run { conn in
            try await PostgresTransaction.run(on: conn, logger: self.logger) { conn in
                try await commit.perform(store: self.store, on: conn)
                var loaded: [String: Data] = [:]
                if !keys.isEmpty {
                    let rows = try await conn.query(
                        """
                        SELECT key, state::text FROM \(unescaped: self.s).process_instances
                        WHERE process = \(process) AND key = ANY(\(Array(keys)))
                        """, logger: self.logger)
                    for try await (key, state) in rows.decode((String, String).self) { loaded[key] = Data(state.utf8) }
                }
                let changes = try compute(loaded)
                for key in changes.deletes {
                    _ = try await conn.query(
                        "DELETE FROM \(unescaped: self.s).process_instances WHERE process = \(process) AND key = \(key)",
                        logger: self.logger)
                }
                for (key, state) in changes.upserts {
                    let json = String(decoding: state, as: UTF8.self)
                    _ = try await conn.query(
                        """
                        INSERT INTO \(unescaped: self.s).process_instances (process, key, state, updated_at)
                        VALUES (\(process), \(key), \(json)::jsonb, now())
                        ON CONFLICT (process, key) DO UPDATE SET state = excluded.state, updated_at = now()
                        """, logger: self.logger)
                }
                for key in changes.cancels {
                    _ = try await conn.query(
                        "DELETE FROM \(unescaped: self.s).command_outbox WHERE cancel_key = \(key)", logger: self.logger
                    )
                }
                try await self.insert(changes.commands, on: conn)
                return ((), true)
            }
        }
    }

    package func instances(process: String) async throws -> [StoredProcessInstance] {
        try await store.run { conn in
            let rows = try await conn.query(
                """
                SELECT key, state::text, updated_at FROM \(unescaped: self.s).process_instances
                WHERE process = \(process) ORDER BY key
                """, logger: self.logger)
            var all: [StoredProcessInstance] = []
            for try await (key, state, updated) in rows.decode((String, String, Date).self) {
                all.append(
                    StoredProcessInstance(process: process, key: key, state: Data(state.utf8), updatedAt: updated))
            }
            return all
        }
    }

    package func deleteInstance(process: String, key: String) async throws {
        try await store.run { conn in
            try await PostgresTransaction.run(on: conn, logger: self.logger) { conn in
                try await self.deleteInstance(process: process, key: key, on: conn)
                return ((), true)
            }
        }
    }

    package func schedule(_ commands: [OutboxCommand]) async throws {
        try await store.run { conn in
            try await PostgresTransaction.run(on: conn, logger: self.logger) { conn in
                try await self.insert(commands, on: conn)
                return ((), true)
            }
        }
    }

    package func cancel(key: String) async throws -> Int {
        try await store.run { conn in
            let rows = try await conn.query(
                "DELETE FROM \(unescaped: self.s).command_outbox WHERE cancel_key = \(key) RETURNING id",
                logger: self.logger)
            var n = 0
            for try await _ in rows.decode(UUID.self) { n += 1 }
            return n
        }
    }

    package func pending(limit: Int) async throws -> [OutboxCommand] {
        try await store.run { conn in
            try await self.commands(
                try await conn.query(
                    """
                    SELECT \(unescaped: Self.columns) FROM \(unescaped: self.s).command_outbox
                    ORDER BY due_at, created_at, id LIMIT \(max(limit, 0))
                    """, logger: self.logger))
        }
    }

    package func nextDue() async throws -> Date? {
        try await store.run { conn in
            let rows = try await conn.query(
                "SELECT min(due_at) FROM \(unescaped: self.s).command_outbox", logger: self.logger)
            for try await due in rows.decode(Date?.self) { return due }
            return nil
        }
    }

    package func dispatchDue(now: Date, limit: Int, dispatch: @Sendable (OutboxCommand) async -> OutboxOutcome)
        async throws -> Int
    {
        var handled = 0
        while handled < limit {
            let claimed = try await store.run { conn in
                try await PostgresTransaction.run(on: conn, logger: self.logger) { conn -> (Bool, commit: Bool) in
                    // The row stays locked until this transaction ends: other processes skip it.
                    let rows = try await conn.query(
                        """
                        SELECT \(unescaped: Self.columns) FROM \(unescaped: self.s).command_outbox
                        WHERE due_at <= \(now) ORDER BY due_at, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
                        """, logger: self.logger)
                    guard let command = try await self.commands(rows).first else { return (false, true) }
                    switch await dispatch(command) {
                    case .done:
                        _ = try await conn.query(
                            "DELETE FROM \(unescaped: self.s).command_outbox WHERE id = \(command.id)",
                            logger: self.logger)
                    case .retry(let at, let error):
                        _ = try await conn.query(
                            """
                            UPDATE \(unescaped: self.s).command_outbox
                            SET due_at = \(at), attempts = attempts + 1, last_error = \(error) WHERE id = \(command.id)
                            """, logger: self.logger)
                    case .stopInstance:
                        _ = try await conn.query(
                            "DELETE FROM \(unescaped: self.s).command_outbox WHERE id = \(command.id)",
                            logger: self.logger)
                        if !command.process.isEmpty {
                            try await self.deleteInstance(process: command.process, key: command.instance, on: conn)
                        }
                    }
                    return (true, true)
                }
            }
            guard claimed else { break }
            handled += 1
        }
        return handled
    }
}
