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
        PostgresMigration(version: 3, name: "jsonb event data, group-commit append function") { schema in
            let s = schema.rawValue
            return [
                // Event data becomes jsonb, queryable with PostgreSQL's JSON functions. A payload
                // that jsonb cannot hold as the same JSON value (not JSON, invalid UTF-8, `\u0000`,
                // duplicate keys) keeps its bytes in data_bytes; exactly one of the two is set.
                """
                CREATE FUNCTION \(s).bytes_to_jsonb(b bytea) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
                BEGIN
                    RETURN convert_from(b, 'UTF8')::jsonb;
                EXCEPTION WHEN others THEN
                    RETURN NULL;
                END
                $$
                """,
                "ALTER TABLE \(s).events ADD COLUMN data_bytes bytea",
                "ALTER TABLE \(s).events DISABLE TRIGGER events_immutable",
                """
                UPDATE \(s).events SET data_bytes = data
                WHERE \(s).bytes_to_jsonb(data) IS NULL
                """,
                "ALTER TABLE \(s).events ENABLE TRIGGER events_immutable",
                """
                ALTER TABLE \(s).events ALTER COLUMN data DROP NOT NULL,
                    ALTER COLUMN data TYPE jsonb
                    USING CASE WHEN data_bytes IS NULL THEN \(s).bytes_to_jsonb(data) END
                """,
                """
                ALTER TABLE \(s).events ADD CONSTRAINT events_data_or_bytes
                    CHECK ((data IS NULL) <> (data_bytes IS NULL))
                """,
                "DROP FUNCTION \(s).bytes_to_jsonb(bytea)",
                appendFunction(s),
            ]
        },
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
        // Measured on a 2-core machine, PostgreSQL 15: with NOTIFY inside the append transaction,
        // concurrent appending transactions wait for PostgreSQL's notification lock (wait event
        // Lock/object), held from before the commit until after its WAL flush, so they cannot
        // share a flush (pgbench, 1-row insert transactions: 2,757/s on 4 connections, 1,366/s with
        // pg_notify in the transaction, 2,791/s with pg_notify after the commit).
        PostgresMigration(
            version: 6, name: "append function without notification: the store notifies after the commit"
        ) { schema in
            [appendFunction(schema.rawValue, name: "append_group", notifies: false)]
        },
        // Measured on a 2-core machine, PostgreSQL 15, one append of one event per call, in the
        // server (a loop of calls, no network, no commit) and through pgbench (autocommit,
        // synchronous_commit off to leave the disk out): `append_group` 0.7-0.8 ms per call,
        // 1.0-1.2 ms per transaction, mostly planning its data-modifying statement again at
        // every call (PostgreSQL kept choosing custom plans); with a generic plan 0.26-0.30 ms;
        // without the separate distinct-streams statement and with the lock of a lone stream
        // taken in a simple expression 0.18-0.21 ms (0.46 ms per transaction; a raw 1-row
        // INSERT into a table with the same indexes: 0.10-0.23 ms). The new function takes the
        // same locks in the same order and writes the same rows as `append_group`, so processes
        // still calling `append_group` stay correct beside it.
        PostgresMigration(
            version: 7, name: "append function with a generic plan and fewer statements"
        ) { schema in
            [
                appendFunction(schema.rawValue, name: "append_batch", notifies: false, lean: true),
                """
                ALTER FUNCTION \(schema.rawValue).append_batch(\(appendArgumentTypes))
                SET plan_cache_mode = force_generic_plan
                """,
            ]
        },
        // The append functions find each append's stream version and stored command with
        // plans made once per session (migration 7's generic plan; migration 6's after five
        // calls), from the statistics of that moment. On a store whose tables were new or small
        // then, PostgreSQL chose to read `streams` and `commands` whole and hash them, and kept
        // that plan until autovacuum next analysed the tables (up to a minute, or more on a busy
        // server): every lone append read every stream row (a benchmark's 6,000 new aggregates
        // read 18 million rows; about 0.6 ms of server CPU per append at that size, growing
        // with the store). Without sequential scans the plan is the one the appends need at any
        // size: one index lookup per append in each table.
        PostgresMigration(version: 8, name: "append functions look streams and commands up by index") { schema in
            let s = schema.rawValue
            return [
                "ALTER FUNCTION \(s).append_batch(\(appendArgumentTypes)) SET enable_seqscan = off",
                "ALTER FUNCTION \(s).append_group(\(appendArgumentTypes)) SET enable_seqscan = off",
                "ALTER FUNCTION \(s).append_events(\(appendArgumentTypes), text) SET enable_seqscan = off",
            ]
        },
        // Measured on a 2-core machine, PostgreSQL 15, one append of one event per call through
        // pgbench (autocommit, synchronous_commit off), server time per call from
        // pg_stat_statements, alternating: `append_batch` 0.20-0.30 ms, this function 0.14-0.22 ms
        // (a raw 1-row INSERT into the events table: 0.03-0.05 ms). A group of one paid for
        // the group's plan: five CTEs, two hash joins, two sorts and an aggregate initialised at
        // every call, around the same three index lookups and three inserts. It takes the same
        // locks in the same order and writes the same rows as `append_batch`.
        PostgresMigration(version: 9, name: "append function for a lone append") { schema in
            [loneAppendFunction(schema.rawValue)]
        },
    ]

    /// The append function the store calls for a group of one (migration 9).
    static let loneAppendFunctionName = "append_one"

    /// The function the store calls for a group of one append (migration 9): the same locks,
    /// checks, rows and result row as ``appendFunction(_:name:notifies:lean:)`` for one append, in
    /// plain statements (each with its own snapshot, taken after the locks), and the append's
    /// own values as scalars.
    static func loneAppendFunction(_ s: String) -> String {
        """
        CREATE FUNCTION \(s).\(loneAppendFunctionName)(
            p_stream text, p_category text, p_expected bigint, p_command uuid, p_fingerprint text,
            e_ids uuid[], e_types text[], e_schema_versions integer[], e_data jsonb[], e_bytes bytea[],
            e_commands uuid[], e_causations uuid[], e_correlations uuid[], e_fields jsonb[],
            p_appender_class text, p_stream_class text)
        RETURNS TABLE (
            append_index integer, status integer, actual_version bigint, first_version bigint,
            last_version bigint, first_position bigint, last_position bigint, transaction_text text,
            recorded_at timestamptz, stored_stream text)
        LANGUAGE plpgsql
        SET plan_cache_mode = force_generic_plan
        SET enable_seqscan = off
        AS $fn$
        #variable_conflict use_column
        DECLARE
            n integer := cardinality(e_ids);
            c record;
        BEGIN
            -- The appender lock first, before the transaction has an id (the read horizon waits
            -- for its holders), then the stream's lock.
            PERFORM pg_advisory_xact_lock_shared(hashtext(p_appender_class), 0);
            PERFORM pg_advisory_xact_lock(hashtext(p_stream_class), hashtext(p_stream));
            -- Statements of their own, so their snapshots see every commit of the locks' last holders.
            append_index := 1;
            SELECT coalesce(max(st.version), 0) INTO actual_version FROM \(s).streams st WHERE st.stream = p_stream;
            IF p_command IS NOT NULL THEN
                SELECT * INTO c FROM \(s).commands cm WHERE cm.command_id = p_command;
                IF FOUND THEN
                    status := CASE WHEN c.fingerprint = p_fingerprint THEN 1 ELSE 3 END;
                    first_version := c.first_version;
                    last_version := c.last_version;
                    first_position := c.first_position;
                    last_position := c.last_position;
                    transaction_text := c.transaction_id::text;
                    stored_stream := c.stream;
                    RETURN NEXT;
                    RETURN;
                END IF;
            END IF;
            IF NOT (p_expected = -1 OR (p_expected = -3 AND actual_version > 0) OR actual_version = p_expected) THEN
                status := 2;
                RETURN NEXT;
                RETURN;
            END IF;
            WITH ins AS (
                INSERT INTO \(s).events (stream, stream_version, event_id, category, type, schema_version, data,
                    data_bytes, command_id, causation_id, correlation_id, fields)
                SELECT p_stream, actual_version + x.k, x.id, p_category, x.type, x.schema_version, x.data, x.bytes,
                       x.command, x.causation, x.correlation, x.fields
                FROM unnest(e_ids, e_types, e_schema_versions, e_data, e_bytes, e_commands, e_causations,
                            e_correlations, e_fields)
                     WITH ORDINALITY AS x(id, type, schema_version, data, bytes, command, causation, correlation,
                                          fields, k)
                ORDER BY x.k
                RETURNING position, recorded_at
            )
            SELECT min(ins.position), max(ins.position), max(ins.recorded_at)
            INTO first_position, last_position, recorded_at FROM ins;
            INSERT INTO \(s).streams AS t (stream, version) VALUES (p_stream, actual_version + n)
            ON CONFLICT (stream) DO UPDATE SET version = excluded.version;
            IF p_command IS NOT NULL AND n > 0 THEN
                INSERT INTO \(s).commands (command_id, stream, first_version, last_version, first_position,
                    last_position, transaction_id, fingerprint)
                VALUES (p_command, p_stream, actual_version + 1, actual_version + n, first_position, last_position,
                        pg_current_xact_id(), p_fingerprint);
            END IF;
            status := 0;
            first_version := actual_version + 1;
            last_version := actual_version + n;
            transaction_text := pg_current_xact_id()::text;
            RETURN NEXT;
        END
        $fn$
        """
    }

    /// The argument types of the append functions `append_group` and `append_batch` (and of
    /// `append_events`, which takes a channel after them), as ALTER FUNCTION names them; the
    /// line breaks are those migration 7 shipped with.
    static let appendArgumentTypes = """
        text[], text[], bigint[], uuid[], text[], integer[],
            integer[], integer[], uuid[], text[], integer[], jsonb[], bytea[], uuid[], uuid[], uuid[],
            jsonb[], text, text
        """

    /// The append function the store calls (migration 7); schemas migrated only through
    /// migration 6 have ``legacyAppendFunctionName`` only.
    static let appendFunctionName = "append_batch"
    /// The append function of migration 6, which processes of older versions still call.
    static let legacyAppendFunctionName = "append_group"

    /// The append function of migration 3, `append_events`, which also sends the transaction's
    /// notification (processes of older versions still call it).
    static func appendFunction(_ s: String) -> String {
        appendFunction(s, name: "append_events", notifies: true)
    }

    /// A function that checks and writes a group of appends in one statement (see
    /// ``PostgresEventStore``'s documentation). Appends of one group have distinct streams and
    /// distinct command ids (the caller groups them so). Per append it returns a status: 0
    /// appended, 1 duplicate of a stored command (the stored result), 2 wrong expected version
    /// (`actual_version`), 3 the command id is stored with other events (`stored_stream`).
    /// Expected versions: -1 any, -3 stream exists, n >= 0 exactly n (0: no stream).
    /// With `notifies`, it takes a last argument `p_channel` and notifies it when it stored events
    /// (migration 3); without (migration 6's `append_group`), the caller notifies after the commit.
    /// `lean` (migration 7's `append_batch`) leaves out the statement that checks the streams are
    /// distinct (the caller groups them so; two appends of one stream in a group would fail the
    /// statement anyway, on `events_stream_version_key` or the streams upsert) and locks a lone
    /// stream in a simple expression; the locks and the rows written are the same.
    static func appendFunction(_ s: String, name: String, notifies: Bool, lean: Bool = false) -> String {
        """
        CREATE FUNCTION \(s).\(name)(
            p_streams text[], p_categories text[], p_expected bigint[], p_commands uuid[],
            p_fingerprints text[], p_counts integer[],
            e_app integer[], e_offsets integer[], e_ids uuid[], e_types text[], e_schema_versions integer[],
            e_data jsonb[], e_bytes bytea[], e_commands uuid[], e_causations uuid[], e_correlations uuid[],
            e_fields jsonb[], p_appender_class text, p_stream_class text\(notifies ? ", p_channel text" : ""))
        RETURNS TABLE (
            append_index integer, status integer, actual_version bigint, first_version bigint,
            last_version bigint, first_position bigint, last_position bigint, transaction_text text,
            recorded_at timestamptz, stored_stream text)
        LANGUAGE plpgsql AS $fn$
        #variable_conflict use_column
        DECLARE
            k integer;
        BEGIN
        \(lean ? leanLocks : locks)
            -- A statement of its own, so its snapshot sees every commit of the locks' last holders.
            RETURN QUERY
            WITH d AS (
                SELECT a.i::integer AS i, a.stream, coalesce(st.version, 0) AS cur,
                       c.stream AS c_stream, c.first_version AS c_first_version, c.last_version AS c_last_version,
                       c.first_position AS c_first_position, c.last_position AS c_last_position,
                       c.transaction_id AS c_transaction,
                       CASE
                           WHEN c.command_id IS NOT NULL THEN
                               CASE WHEN c.fingerprint = p_fingerprints[a.i] THEN 1 ELSE 3 END
                           WHEN p_expected[a.i] = -1 THEN 0
                           WHEN p_expected[a.i] = -3 THEN CASE WHEN coalesce(st.version, 0) > 0 THEN 0 ELSE 2 END
                           WHEN coalesce(st.version, 0) = p_expected[a.i] THEN 0
                           ELSE 2
                       END AS status
                FROM unnest(p_streams, p_commands) WITH ORDINALITY AS a(stream, command, i)
                LEFT JOIN \(s).streams st ON st.stream = a.stream
                LEFT JOIN \(s).commands c ON c.command_id = a.command
            ),
            ins AS (
                INSERT INTO \(s).events (stream, stream_version, event_id, category, type, schema_version, data,
                    data_bytes, command_id, causation_id, correlation_id, fields)
                SELECT d.stream, d.cur + x.k, x.id, p_categories[d.i], x.type, x.schema_version, x.data, x.bytes,
                       x.command, x.causation, x.correlation, x.fields
                FROM unnest(e_app, e_offsets, e_ids, e_types, e_schema_versions, e_data, e_bytes, e_commands,
                            e_causations, e_correlations, e_fields)
                     WITH ORDINALITY AS x(app, k, id, type, schema_version, data, bytes, command, causation,
                                          correlation, fields, n)
                JOIN d ON d.i = x.app AND d.status = 0
                ORDER BY x.n
                RETURNING position, stream, recorded_at
            ),
            placed AS (
                SELECT ins.stream, min(ins.position) AS first_position, max(ins.position) AS last_position,
                       max(ins.recorded_at) AS recorded_at
                FROM ins GROUP BY ins.stream
            ),
            ups AS (
                INSERT INTO \(s).streams AS t (stream, version)
                SELECT d.stream, d.cur + p_counts[d.i] FROM d WHERE d.status = 0
                ON CONFLICT (stream) DO UPDATE SET version = excluded.version
            ),
            cmd AS (
                INSERT INTO \(s).commands (command_id, stream, first_version, last_version, first_position,
                    last_position, transaction_id, fingerprint)
                SELECT p_commands[d.i], d.stream, d.cur + 1, d.cur + p_counts[d.i], p.first_position,
                       p.last_position, pg_current_xact_id(), p_fingerprints[d.i]
                FROM d JOIN placed p ON p.stream = d.stream
                WHERE d.status = 0 AND p_commands[d.i] IS NOT NULL
            )
            SELECT d.i, d.status, d.cur,
                   CASE d.status WHEN 0 THEN d.cur + 1 WHEN 1 THEN d.c_first_version END,
                   CASE d.status WHEN 0 THEN d.cur + p_counts[d.i] WHEN 1 THEN d.c_last_version END,
                   CASE d.status WHEN 0 THEN p.first_position WHEN 1 THEN d.c_first_position END,
                   CASE d.status WHEN 0 THEN p.last_position WHEN 1 THEN d.c_last_position END,
                   CASE d.status WHEN 0 THEN pg_current_xact_id()::text WHEN 1 THEN d.c_transaction::text END,
                   p.recorded_at, d.c_stream
            FROM d LEFT JOIN placed p ON p.stream = d.stream AND d.status = 0
            ORDER BY d.i;\(notifies ? notification : "")
        END
        $fn$
        """
    }

    /// The distinct-streams check and the locks of migrations 3 and 6's functions.
    private static let locks = """
            IF (SELECT count(DISTINCT x) FROM unnest(p_streams) x) <> cardinality(p_streams) THEN
                RAISE EXCEPTION 'backstage: one append per stream in a group' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            -- The appender lock first, before the transaction has an id (the read horizon waits
            -- for its holders), then the streams' locks in one order for every process.
            PERFORM pg_advisory_xact_lock_shared(hashtext(p_appender_class), 0);
            FOR k IN SELECT DISTINCT hashtext(x) FROM unnest(p_streams) x ORDER BY 1 LOOP
                PERFORM pg_advisory_xact_lock(hashtext(p_stream_class), k);
            END LOOP;
        """

    /// The locks of migration 7's function: the same locks in the same order, a lone stream's
    /// lock in a simple expression (no query).
    private static let leanLocks = """
            -- The appender lock first, before the transaction has an id (the read horizon waits
            -- for its holders), then the streams' locks in one order for every process.
            PERFORM pg_advisory_xact_lock_shared(hashtext(p_appender_class), 0);
            IF cardinality(p_streams) = 1 THEN
                PERFORM pg_advisory_xact_lock(hashtext(p_stream_class), hashtext(p_streams[1]));
            ELSE
                FOR k IN SELECT DISTINCT hashtext(x) FROM unnest(p_streams) x ORDER BY 1 LOOP
                    PERFORM pg_advisory_xact_lock(hashtext(p_stream_class), k);
                END LOOP;
            END IF;
        """

    /// The notification step of migration 3's function.
    private static let notification = """

            -- One notification per transaction, none when nothing was written (no transaction id).
            IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
                PERFORM pg_notify(p_channel, '');
            END IF;
        """

    /// Brings `schema` up to the latest migration. Safe to run from several processes at once:
    /// a transaction-scoped advisory lock per schema serialises them. `through` stops after that
    /// version (tests build old schemas with it).
    static func migrate(
        _ schema: PostgresSchemaName, on connection: PostgresConnection, logger: Logger, through: Int = .max
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
            for migration in all where !applied.contains(migration.version) && migration.version <= through {
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
        // postgres-nio's withTransaction, except that no ROLLBACK or COMMIT is sent on a connection
        // that closed (queryUnlessClosed; the server rolled the transaction back when the session
        // ended): a query written to a closed channel never completes in postgres-nio 1.33 (its
        // promise is dropped with the write; ClosedConnectionQueryTests), and the caller would
        // wait for ever. Seen after a process was paused past idle_in_transaction_session_timeout:
        // the server ended the session, the transaction's query failed, and the ROLLBACK hung
        // (shareKillPauseJoin's resumed process).
        _ = try await connection.query("BEGIN;", logger: logger)
        let value: T
        do {
            value = try await body(connection)
        } catch {
            _ = try? await connection.queryUnlessClosed("ROLLBACK;", logger: logger)
            throw error
        }
        _ = try await connection.queryUnlessClosed("COMMIT;", logger: logger)
        return value
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
