import Logging
import PostgresNIO

/// One step of the PostgreSQL schema. Migrations are append-only: a released one never changes.
struct PostgresMigration: Sendable {
    let version: Int
    let name: String
    let statements: @Sendable (PostgresSchemaName) -> [String]
}

enum PostgresMigrations {
    /// Every migration, in order.
    static let all: [PostgresMigration] = [
        PostgresMigration(version: 1, name: "event store") { schema in
            let s = schema.rawValue
            return [
                """
                CREATE TABLE \(s).streams (
                    stream text PRIMARY KEY,
                    version bigint NOT NULL CHECK (version >= 0)
                )
                """,
                """
                CREATE TABLE \(s).events (
                    position bigserial PRIMARY KEY,
                    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
                    stream text NOT NULL,
                    stream_version bigint NOT NULL CHECK (stream_version > 0),
                    event_id uuid NOT NULL,
                    category text NOT NULL,
                    type text NOT NULL,
                    schema_version integer NOT NULL,
                    data bytea NOT NULL,
                    command_id uuid,
                    causation_id uuid,
                    correlation_id uuid,
                    fields jsonb,
                    recorded_at timestamptz NOT NULL DEFAULT now(),
                    CONSTRAINT events_stream_version_key UNIQUE (stream, stream_version),
                    CONSTRAINT events_event_id_key UNIQUE (event_id)
                )
                """,
                "CREATE INDEX events_log_order ON \(s).events (transaction_id, position)",
                "CREATE INDEX events_by_type ON \(s).events (type, transaction_id, position)",
                "CREATE INDEX events_by_category ON \(s).events (category, transaction_id, position)",
                """
                CREATE FUNCTION \(s).reject_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    RAISE EXCEPTION 'backstage: events are immutable (% rejected)', TG_OP
                        USING ERRCODE = 'insufficient_privilege';
                END
                $$
                """,
                """
                CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON \(s).events
                FOR EACH ROW EXECUTE FUNCTION \(s).reject_event_change()
                """,
                """
                CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON \(s).events
                FOR EACH STATEMENT EXECUTE FUNCTION \(s).reject_event_change()
                """,
                """
                CREATE TABLE \(s).commands (
                    command_id uuid PRIMARY KEY,
                    stream text NOT NULL,
                    first_version bigint NOT NULL,
                    last_version bigint NOT NULL,
                    first_position bigint NOT NULL,
                    last_position bigint NOT NULL,
                    transaction_id xid8 NOT NULL,
                    fingerprint text NOT NULL,
                    recorded_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                """
                CREATE TABLE \(s).snapshots (
                    stream text PRIMARY KEY,
                    version bigint NOT NULL,
                    schema_version integer NOT NULL,
                    data bytea NOT NULL,
                    recorded_at timestamptz NOT NULL
                )
                """,
            ]
        },
        PostgresMigration(version: 2, name: "pipelines: checkpoints, leases, parked events, projections") { schema in
            let s = schema.rawValue
            return [
                """
                CREATE TABLE \(s).checkpoints (
                    subscription text PRIMARY KEY,
                    transaction_id xid8 NOT NULL,
                    position bigint NOT NULL,
                    token bigint NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                """
                CREATE TABLE \(s).leases (
                    subscription text PRIMARY KEY,
                    token bigint NOT NULL,
                    owner text NOT NULL,
                    acquired_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                """
                CREATE TABLE \(s).parked_events (
                    subscription text NOT NULL,
                    transaction_id xid8 NOT NULL,
                    position bigint NOT NULL REFERENCES \(s).events (position),
                    error text NOT NULL,
                    attempts integer NOT NULL,
                    parked_at timestamptz NOT NULL,
                    PRIMARY KEY (subscription, transaction_id, position)
                )
                """,
                """
                CREATE TABLE \(s).projections (
                    name text PRIMARY KEY,
                    active_version integer NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now()
                )
                """,
            ]
        },
    ]

    /// Brings `schema` up to the latest migration. Safe to run from several processes at once:
    /// a transaction-scoped advisory lock per schema serialises them.
    static func migrate(
        _ schema: PostgresSchemaName, on connection: PostgresConnection, logger: Logger
    ) async throws -> [Int] {
        let s = schema.rawValue
        let lockKey = "backstage.migrate.\(s)"
        return try await PostgresTransaction.withTransaction(on: connection, logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(hashtext(\(lockKey)))", logger: logger)
            try await conn.query(PostgresQuery(unsafeSQL: "CREATE SCHEMA IF NOT EXISTS \(s)"), logger: logger)
            try await conn.query(
                PostgresQuery(
                    unsafeSQL: """
                        CREATE TABLE IF NOT EXISTS \(s).migrations (
                            version integer PRIMARY KEY,
                            name text NOT NULL,
                            applied_at timestamptz NOT NULL DEFAULT now()
                        )
                        """), logger: logger)
            var applied = Set<Int>()
            let rows = try await conn.query(
                PostgresQuery(unsafeSQL: "SELECT version FROM \(s).migrations"), logger: logger)
            for try await version in rows.decode(Int32.self) { applied.insert(Int(version)) }
            var ran: [Int] = []
            for migration in all where !applied.contains(migration.version) {
                for statement in migration.statements(schema) {
                    try await conn.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                let version = Int32(migration.version)
                try await conn.query(
                    "INSERT INTO \(unescaped: s).migrations (version, name) VALUES (\(version), \(migration.name))",
                    logger: logger)
                ran.append(migration.version)
            }
            return ran
        }
    }
}

/// Transactions through postgres-nio's `withTransaction`, with the closure's own errors
/// rethrown unchanged (postgres-nio wraps them in `PostgresTransactionError`).
enum PostgresTransaction {
    /// Runs `body` in a transaction (`BEGIN`, `COMMIT`; `ROLLBACK` when it throws) and returns its
    /// value. An error of `body` is rethrown as it is; a failed `BEGIN` or `COMMIT` as the driver's error.
    static func withTransaction<T: Sendable>(
        on connection: PostgresConnection, logger: Logger,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> sending T
    ) async throws -> T {
        do {
            return try await connection.withTransaction(logger: logger, isolation: isolation, body)
        } catch let error as PostgresTransactionError {
            throw error.closureError ?? error.beginError ?? error.commitError ?? error
        }
    }

    /// Runs `body` in a transaction that commits when it returns `commit: true` and rolls back
    /// when it returns `commit: false` (an append answered from a stored command writes nothing)
    /// or throws.
    static func run<T: Sendable>(
        on connection: PostgresConnection, logger: Logger,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> (T, commit: Bool)
    ) async throws -> T {
        do {
            return try await withTransaction(on: connection, logger: logger, isolation: isolation) { conn in
                let (value, commit) = try await body(conn)
                if !commit { throw RollBack(value: value) }
                return value
            }
        } catch let rollBack as RollBack<T> {
            return rollBack.value
        }
    }

    /// Thrown out of `withTransaction` to roll back while returning a value.
    private struct RollBack<T: Sendable>: Error {
        var value: T
    }
}
