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
        // Version 3 is the jsonb event data migration (another branch); the migrator applies
        // every missing version in order, whatever the gaps.
        PostgresMigration(version: 4, name: "partitioned subscriptions: partition hashes, expiring leases, members") {
            schema in
            let s = schema.rawValue
            // The hash of a partition key: the first 28 bits of its MD5, a non-negative integer;
            // IMMUTABLE built-ins only, so it can be a stored generated column, computed once
            // when the event is appended (the append statement is unchanged).
            func hash(_ column: String) -> String { "(('x' || substr(md5(\(column)), 1, 7))::bit(28)::integer)" }
            return [
                """
                ALTER TABLE \(s).events
                    ADD COLUMN stream_hash integer GENERATED ALWAYS AS \(hash("stream")) STORED,
                    ADD COLUMN category_hash integer GENERATED ALWAYS AS \(hash("category")) STORED
                """,
                "ALTER TABLE \(s).leases ADD COLUMN expires_at timestamptz",
                """
                CREATE TABLE \(s).members (
                    subscription text NOT NULL,
                    member text NOT NULL,
                    expires_at timestamptz NOT NULL,
                    PRIMARY KEY (subscription, member)
                )
                """,
            ]
        },
        // Version 5: process managers (helpers of other features take 3 and 4; gaps are fine: the
        // migrator applies every version not yet recorded).
        PostgresMigration(version: 5, name: "process managers: instances, command outbox") { schema in
            let s = schema.rawValue
            return [
                """
                CREATE TABLE \(s).process_instances (
                    process text NOT NULL,
                    key text NOT NULL,
                    state jsonb NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (process, key)
                )
                """,
                """
                CREATE TABLE \(s).command_outbox (
                    id uuid PRIMARY KEY,
                    process text NOT NULL,
                    instance text NOT NULL,
                    command text NOT NULL,
                    data jsonb NOT NULL,
                    causation_id uuid,
                    correlation_id uuid,
                    due_at timestamptz NOT NULL,
                    cancel_key text,
                    attempts integer NOT NULL DEFAULT 0,
                    last_error text,
                    created_at timestamptz NOT NULL
                )
                """,
                "CREATE INDEX command_outbox_due ON \(s).command_outbox (due_at, created_at)",
                "CREATE INDEX command_outbox_cancel ON \(s).command_outbox (cancel_key) WHERE cancel_key IS NOT NULL",
                "CREATE INDEX command_outbox_instance ON \(s).command_outbox (process, instance)",
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
        return try await PostgresTransaction.run(on: connection, logger: logger) { conn in
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
            return (ran, true)
        }
    }
}

/// Runs a closure inside `BEGIN ... COMMIT` on one connection, without wrapping its errors.
enum PostgresTransaction {
    /// Runs `body` in a transaction; it returns its value and whether to commit (false: roll back).
    /// Errors thrown by `body` roll back and are rethrown unchanged.
    static func run<T: Sendable>(
        on connection: PostgresConnection, logger: Logger,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> (T, commit: Bool)
    ) async throws -> T {
        try await connection.query("BEGIN", logger: logger)
        let value: T
        let commit: Bool
        do {
            (value, commit) = try await body(connection)
        } catch {
            _ = try? await connection.query("ROLLBACK", logger: logger)
            throw error
        }
        try await connection.query(commit ? "COMMIT" : "ROLLBACK", logger: logger)
        return value
    }
}
