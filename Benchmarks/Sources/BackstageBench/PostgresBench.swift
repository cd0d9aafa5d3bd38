import Backstage
import BackstagePostgres
import Foundation
import Logging
import PostgresNIO

/// The fastest PostgreSQL does on this machine through postgres-nio, with the server's settings
/// (the cluster of `scripts/postgres`: fsync and synchronous_commit on) and the store's row shape
/// (the events table's columns and indexes, about 200-byte payloads), without the store's work
/// (no stream lock row, no command row, no notification).
struct PostgresCeiling {
    let client: PostgresClient
    let schema: String
    let payloads: [Data]
    let logger = Logger(label: "backstage-bench.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Creates the schema `schema` with a copy of the store's events table.
    func create() async throws {
        let s = schema
        try await client.query("CREATE SCHEMA \(unescaped: s)", logger: logger)
        try await client.query(
            """
            CREATE TABLE \(unescaped: s).events (
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
                UNIQUE (stream, stream_version),
                UNIQUE (event_id)
            )
            """, logger: logger)
        try await client.query(
            "CREATE INDEX ON \(unescaped: s).events (transaction_id, position)", logger: logger)
        try await client.query(
            "CREATE INDEX ON \(unescaped: s).events (type, transaction_id, position)", logger: logger)
        try await client.query(
            "CREATE INDEX ON \(unescaped: s).events (category, transaction_id, position)", logger: logger)
    }

    /// The server settings that decide durability.
    func settings() async throws -> String {
        var parts: [String] = []
        for name in ["fsync", "synchronous_commit", "full_page_writes", "wal_sync_method"] {
            let rows = try await client.query("SELECT current_setting(\(name))", logger: logger)
            for try await value in rows.decode(String.self) { parts.append("\(name)=\(value)") }
        }
        return parts.joined(separator: ", ")
    }

    private func rowsQuery(stream: String, from version: Int, count: Int, index: Int) throws -> PostgresQuery {
        var sql = PostgresQuery.StringInterpolation(literalCapacity: 256, interpolationCount: count * 8)
        sql.appendLiteral("INSERT INTO ")
        sql.appendInterpolation(unescaped: schema)
        sql.appendLiteral(
            ".events (stream, stream_version, event_id, category, type, schema_version, data, command_id, causation_id, correlation_id) VALUES "
        )
        for r in 0..<count {
            let id = UUIDv7.next()
            sql.appendLiteral(r == 0 ? "(" : ", (")
            sql.appendInterpolation(stream)
            sql.appendLiteral(", ")
            sql.appendInterpolation(version + r)
            sql.appendLiteral(", ")
            sql.appendInterpolation(id)
            sql.appendLiteral(", 'raw', 'Deposited', 1, ")
            try sql.appendInterpolation(payloads[(index + r) % payloads.count])
            sql.appendLiteral(", ")
            sql.appendInterpolation(id)
            sql.appendLiteral(", ")
            sql.appendInterpolation(id)
            sql.appendLiteral(", ")
            sql.appendInterpolation(id)
            sql.appendLiteral(")")
        }
        return PostgresQuery(stringInterpolation: sql)
    }

    /// `count` single-row INSERTs, each its own transaction (autocommit), in sequence.
    func singleRowTransactions(count: Int) async throws -> Double {
        let tag = UUID().uuidString.prefix(8)
        let start = ContinuousClock.now
        try await client.withConnection { conn in
            for i in 0..<count {
                try await conn.query(
                    try rowsQuery(stream: "raw-single-\(tag)-\(i)", from: 1, count: 1, index: i), logger: logger)
            }
        }
        return Double(count) / (ContinuousClock.now - start).seconds
    }

    /// `transactions` transactions of one `rows`-row INSERT each, in sequence.
    func batchTransactions(transactions: Int, rows: Int) async throws -> Double {
        let tag = UUID().uuidString.prefix(8)
        let start = ContinuousClock.now
        try await client.withConnection { conn in
            for t in 0..<transactions {
                try await conn.query("BEGIN", logger: logger)
                try await conn.query(
                    try rowsQuery(stream: "raw-batch-\(tag)-\(t)", from: 1, count: rows, index: t), logger: logger)
                try await conn.query("COMMIT", logger: logger)
            }
        }
        return Double(transactions * rows) / (ContinuousClock.now - start).seconds
    }

    /// Reads every row of `table` in log order in pages of `pageSize`, decoding every column.
    func readAll(table: String, pageSize: Int) async throws -> (rate: Double, rows: Int) {
        let start = ContinuousClock.now
        var after: Int64 = 0
        var total = 0
        var counts: [String: Int] = [:]
        while true {
            let rows = try await client.query(
                """
                SELECT position, stream, stream_version, event_id, type, schema_version, data, command_id,
                    causation_id, correlation_id, recorded_at
                FROM \(unescaped: table) WHERE position > \(after) ORDER BY position LIMIT \(pageSize)
                """, logger: logger)
            var n = 0
            for try await (position, _, _, _, type, _, _, _, _, _, _) in rows.decode(
                (Int64, String, Int64, UUID, String, Int32, Data, UUID?, UUID?, UUID?, Date).self)
            {
                after = position
                counts[type, default: 0] += 1
                n += 1
            }
            if n == 0 { break }
            total += n
        }
        return (Double(total) / (ContinuousClock.now - start).seconds, total)
    }

    func drop() async throws {
        try await client.query("DROP SCHEMA \(unescaped: schema) CASCADE", logger: logger)
    }
}

extension BackstageBench {
    func runPostgres(sizes: Sizes, parts: Set<String>, report: Report, payloads: [Data]) async throws {
        guard let url = ProcessInfo.processInfo.environment["BACKSTAGE_POSTGRES_URL"], !url.isEmpty else {
            report.note(
                "postgres skipped: BACKSTAGE_POSTGRES_URL is not set (eval \"$(scripts/postgres start)\" first)")
            return
        }
        let settings = try PostgresConnectionSettings(url: url)
        let client = PostgresClient(configuration: settings.clientConfiguration(maximumConnections: 8))
        // The ceilings' client runs for as long as the measurements do.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await runPostgres(
                url: url, client: client, sizes: sizes, parts: parts, report: report, payloads: payloads)
        }
    }

    private func runPostgres(
        url: String, client: PostgresClient, sizes: Sizes, parts: Set<String>, report: Report, payloads: [Data]
    ) async throws {
        let tag = UUID().uuidString.prefix(8).lowercased()
        let ceiling = PostgresCeiling(client: client, schema: "bench_raw_\(tag)", payloads: payloads)
        try await ceiling.create()
        let serverSettings = try await ceiling.settings()
        report.setting("postgres.server", serverSettings)

        func measureCeilings(_ when: String) async throws {
            guard parts.contains("ceilings") else { return }
            let single = try await ceiling.singleRowTransactions(count: sizes.ceilingSingleRows)
            report.ceiling(
                "raw 1-row tx", store: "postgres", value: single, unit: "rows/s", label: "raw 1-row tx, \(when)",
                note: "\(sizes.ceilingSingleRows) autocommit INSERTs of 1 row through postgres-nio, \(serverSettings)")
            let batch = try await ceiling.batchTransactions(
                transactions: sizes.ceilingBatchTransactions, rows: sizes.ceilingBatchRows)
            report.ceiling(
                "raw 1000-row tx", store: "postgres", value: batch, unit: "rows/s", label: "raw 1000-row tx, \(when)",
                note: "\(sizes.ceilingBatchTransactions) transactions of one \(sizes.ceilingBatchRows)-row INSERT")
        }
        try await measureCeilings("before")

        var configuration = PostgresEventStore.Configuration()
        configuration.schema = "bench_store_\(tag)"
        let store = try PostgresEventStore(url: url, configuration: configuration)
        try await PostgresEventStore.withStore(store) { store in
            var w = Workloads(
                store: store, storeName: "postgres", sizes: sizes, report: report, singleRowCeiling: "raw 1-row tx",
                batchCeiling: "raw 1000-row tx", readCeiling: "raw read", absoluteTargets: false)
            w.probe = { which, before in
                guard parts.contains("ceilings") else { return }
                if which == "single" {
                    let value = try await ceiling.singleRowTransactions(count: sizes.probeSingleRows)
                    report.ceiling(
                        "raw 1-row tx", store: "postgres", value: value, unit: "rows/s",
                        label: "raw 1-row tx, before \(before)",
                        note: "\(sizes.probeSingleRows) autocommit INSERTs, measured again for the next figure")
                } else {
                    let value = try await ceiling.batchTransactions(
                        transactions: sizes.probeBatchTransactions, rows: sizes.ceilingBatchRows)
                    report.ceiling(
                        "raw 1000-row tx", store: "postgres", value: value, unit: "rows/s",
                        label: "raw 1000-row tx, before \(before)",
                        note: "\(sizes.probeBatchTransactions) transactions of one \(sizes.ceilingBatchRows)-row INSERT, measured again")
                }
            }
            func measureReadCeiling(_ when: String) async throws {
                guard parts.contains("ceilings") else { return }
                let read = try await ceiling.readAll(table: "\(configuration.schema).events", pageSize: sizes.w4PageSize)
                report.ceiling(
                    "raw read", store: "postgres", value: read.rate, unit: "rows/s", label: "raw read, \(when)",
                    note: "\(read.rows) rows of the store's table in pages of \(sizes.w4PageSize), every column decoded")
            }
            try await runWorkloads(
                w, parts: parts, payloads: payloads, beforeW4: { try await measureReadCeiling("before") },
                afterW4: { try await measureReadCeiling("after") })
        }
        try await measureCeilings("after")
        try await ceiling.drop()
        try await client.query("DROP SCHEMA \(unescaped: configuration.schema) CASCADE", logger: ceiling.logger)
    }
}
