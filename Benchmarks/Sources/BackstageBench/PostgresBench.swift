import Backstage
import BackstagePostgres
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// The fastest PostgreSQL does on this machine through postgres-nio, with the server's settings
/// (the cluster of `scripts/postgres`: fsync and synchronous_commit on) and the store's row shape
/// (the events table's columns and indexes, about 200-byte JSON payloads in jsonb), without the store's work
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
                data jsonb,
                data_bytes bytea,
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
            // The store's shape: JSON payloads in a jsonb column.
            sql.appendInterpolation(String(decoding: payloads[(index + r) % payloads.count], as: UTF8.self))
            sql.appendLiteral("::jsonb, ")
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

    /// `count` single-row autocommit INSERTs spread over `connections` connections working at once.
    func singleRowTransactions(count: Int, connections: Int) async throws -> Double {
        let tag = UUID().uuidString.prefix(8)
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for c in 0..<connections {
                group.addTask {
                    try await client.withConnection { conn in
                        for i in stride(from: c, to: count, by: connections) {
                            try await conn.query(
                                try rowsQuery(stream: "raw-par-\(tag)-\(i)", from: 1, count: 1, index: i),
                                logger: logger)
                        }
                    }
                }
            }
            try await group.waitForAll()
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
                SELECT position, stream, stream_version, event_id, type, schema_version, jsonb_send(data), command_id,
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
        try await withBackground({ await client.run() }) {
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
                    note:
                        "\(sizes.ceilingSingleRows) autocommit INSERTs of 1 row through postgres-nio, \(serverSettings)"
                )
                let batch = try await ceiling.batchTransactions(
                    transactions: sizes.ceilingBatchTransactions, rows: sizes.ceilingBatchRows)
                report.ceiling(
                    "raw 1000-row tx", store: "postgres", value: batch, unit: "rows/s",
                    label: "raw 1000-row tx, \(when)",
                    note: "\(sizes.ceilingBatchTransactions) transactions of one \(sizes.ceilingBatchRows)-row INSERT")
            }
            try await measureCeilings("before")

            var configuration = PostgresEventStore.Configuration()
            configuration.schema = "bench_store_\(tag)"
            let store = try PostgresEventStore(url: url, configuration: configuration)
            // The store is a Service: it runs (pool, migrations, notification listener) beside the workloads.
            try await withBackground({ try await store.run() }) {
                try await store.waitUntilReady()
                var w = Workloads(
                    store: store, storeName: "postgres", sizes: sizes, report: report, singleRowCeiling: "raw 1-row tx",
                    batchCeiling: "raw 1000-row tx", readCeiling: "raw read", absoluteTargets: false)
                w.parallelCeiling = "raw 1-row tx, 4 connections"
                w.measureSingleRows = { transactions in
                    guard parts.contains("ceilings") else { return nil }
                    return try await ceiling.singleRowTransactions(count: transactions)
                }
                w.probe = { which, before in
                    guard parts.contains("ceilings") else { return }
                    if which == "parallel" {
                        let value = try await ceiling.singleRowTransactions(
                            count: sizes.probeSingleRows, connections: 4)
                        report.ceiling(
                            "raw 1-row tx, 4 connections", store: "postgres", value: value, unit: "rows/s",
                            label: "raw 1-row tx, 4 connections, before \(before)",
                            note:
                                "\(sizes.probeSingleRows) autocommit INSERTs over 4 connections, measured again for the next figure"
                        )
                    } else if which == "single" {
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
                            note:
                                "\(sizes.probeBatchTransactions) transactions of one \(sizes.ceilingBatchRows)-row INSERT, measured again"
                        )
                    }
                }
                func measureReadCeiling(_ when: String) async throws {
                    guard parts.contains("ceilings") else { return }
                    let read = try await ceiling.readAll(
                        table: "\(configuration.schema).events", pageSize: sizes.w4PageSize)
                    report.ceiling(
                        "raw read", store: "postgres", value: read.rate, unit: "rows/s", label: "raw read, \(when)",
                        note:
                            "\(read.rows) rows of the store's table in pages of \(sizes.w4PageSize), every column decoded"
                    )
                }
                try await runWorkloads(
                    w, parts: parts, payloads: payloads, beforeW4: { try await measureReadCeiling("before") },
                    afterW4: {
                        // W4 through PostgresProjection: a count-per-type table, one upsert per batch.
                        for batchSize in [ProjectionOptions().batchSize, 5_000] {
                            var options = ProjectionOptions()
                            options.batchSize = batchSize
                            options.maxInFlight = max(options.maxInFlight, 2 * batchSize)
                            let model = PostgresTypeCountReadModel(
                                name: "w4-pg-\(batchSize)", table: "w4_type_counts_\(batchSize)")
                            let projection = try PostgresProjection(model, store: store, options: options)
                            try await w.w4Projection(
                                projection, label: "PostgresProjection/\(batchSize)",
                                description:
                                    "PostgresProjection upserting a count-per-type table, one statement per batch",
                                counts: { try await model.counts(store) })
                        }
                        try await measureReadCeiling("after")
                    })
                if parts.contains("w1") {
                    if parts.contains("ceilings") {
                        let parallel = try await ceiling.singleRowTransactions(
                            count: sizes.ceilingSingleRows, connections: 4)
                        report.ceiling(
                            "raw 1-row tx, 4 connections", store: "postgres", value: parallel, unit: "rows/s",
                            note:
                                "\(sizes.ceilingSingleRows) autocommit INSERTs of 1 row over 4 postgres-nio connections at once"
                        )
                    }
                    try await w1WithLag(store: store, sizes: sizes, report: report)
                }
                if parts.contains("w5") {
                    try await w5Processes(url: url, schema: configuration.schema, sizes: sizes, report: report)
                }
                if peer { comparePeer(report: report, store: "postgres") }
                await store.close()
            }
            try await measureCeilings("after")
            try await ceiling.drop()
            try await client.query("DROP SCHEMA \(unescaped: configuration.schema) CASCADE", logger: ceiling.logger)
        }
    }
}

extension PostgresEventStore: StoreStatistics {
    var writerStatistics: (transactions: Int, appends: Int, largestGroup: Int) {
        let s = statistics
        return (s.transactions, s.appends, s.largestGroup)
    }
}

/// W4's read model in PostgreSQL: one row per event type with its count; a batch is one upsert.
struct PostgresTypeCountReadModel: PostgresReadModel {
    let name: String
    let table: String
    var tables: [String] { [table] }
    let logger = Logger(label: "backstage-bench.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        try await connection.query(
            "CREATE TABLE \(unescaped: try tables.table(table)) (type text PRIMARY KEY, count bigint NOT NULL)",
            logger: logger)
    }

    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        try await apply([event], on: connection, tables: tables)
    }

    func apply(_ events: [RecordedEvent], on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        var counts: [String: Int64] = [:]
        for event in events { counts[event.type, default: 0] += 1 }
        let table = try tables.table(table)
        try await connection.query(
            """
            INSERT INTO \(unescaped: table) AS t (type, count)
            SELECT * FROM unnest(\(Array(counts.keys)), \(Array(counts.values)))
            ON CONFLICT (type) DO UPDATE SET count = t.count + excluded.count
            """, logger: logger)
    }

    func counts(_ store: PostgresEventStore) async throws -> [String: Int] {
        var counts: [String: Int] = [:]
        let rows = try await store.client.query(
            "SELECT type, count FROM \(unescaped: store.schema.rawValue).\(unescaped: table)", logger: logger)
        for try await (type, count) in rows.decode((String, Int64).self) { counts[type] = Int(count) }
        return counts
    }
}

/// One time per command index (seconds since 1970), set once.
final class TimeTable: @unchecked Sendable {
    private let lock = NSLock()
    private var times: [Double?]
    init(count: Int) { times = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ date: Date) {
        lock.withLock { if times.indices.contains(i), times[i] == nil { times[i] = date.timeIntervalSince1970 } }
    }
    var values: [Double?] { lock.withLock { times } }
}

/// Delivery delays seen by a reader, in seconds.
final class LagSamples: @unchecked Sendable {
    private let lock = NSLock()
    private var samples: [Double] = []
    func add(_ values: [Double]) { lock.withLock { samples.append(contentsOf: values) } }
    func percentile(_ p: Double) -> Double? {
        lock.withLock {
            guard !samples.isEmpty else { return nil }
            let sorted = samples.sorted()
            return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
        }
    }
    var count: Int { lock.withLock { samples.count } }
}

extension BackstageBench {
    /// W1 with 64 callers while a reader follows the log the way subscriptions do (woken by the
    /// store's notifications, reading below the read horizon): commands/s beside the 4-connection
    /// ceiling, and the delay from each event's `recorded_at` (its transaction's start, so an
    /// upper bound of commit-to-delivery) to the moment the reader has it.
    func w1WithLag(store: PostgresEventStore, sizes: Sizes, report: Report) async throws {
        let n = sizes.w1Aggregates
        let callers = sizes.w1Callers
        let app = BackstageApp(store: store, router: try accountRouter())
        let start = try await store.headPosition()
        let samples = LagSamples()
        // Where the lag goes: when each command's dispatch returned (its commit acknowledged to
        // the caller), when the reader had its event, how long each readAll took.
        let acked = TimeTable(count: n)
        let seen = TimeTable(count: n)
        let reads = LagSamples()
        let wakes = Atomic<Int>(0)
        let emptyReads = Atomic<Int>(0)
        let notifications = store.appendNotifications()
        // Follows the log until cancelled, woken by each notification (a hint).
        let follow: @Sendable () async throws -> Void = {
            var after = start
            for await _ in notifications {
                wakes.add(1, ordering: .relaxed)
                var first = true
                while true {
                    let readStart = Date()
                    let page = try await store.readAll(after: after, limit: 1_000, filter: .all)
                    let now = Date()
                    reads.add([now.timeIntervalSince(readStart)])
                    guard let last = page.last else {
                        if first { emptyReads.add(1, ordering: .relaxed) }
                        break
                    }
                    first = false
                    samples.add(page.map { now.timeIntervalSince($0.recordedAt) })
                    for event in page {
                        if let i = Int(event.stream.dropFirst("account-w1lag".count)) { seen.set(i, now) }
                    }
                    after = last.logPosition
                    // A short page had every event below the horizon: wait for the next hint,
                    // as a subscription does.
                    if page.count < 1_000 { break }
                }
            }
        }
        // How late this process gets the CPU: a task asks to wake after 1 ms, again and again;
        // its overshoot is the scheduling delay every step of the delivery pays (on 2 cores
        // shared with the server, the 64 callers and whatever else the machine runs).
        let overshoot = LagSamples()
        let probe: @Sendable () async throws -> Void = {
            while !Task.isCancelled {
                let asked = ContinuousClock.now
                try await Task.sleep(for: .milliseconds(1))
                overshoot.add([(ContinuousClock.now - asked - .milliseconds(1)).seconds])
            }
        }
        let loadBefore =
            (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first ?? "?"
        let before = store.statistics
        let cpuBefore = processCPUTime()
        // The reader runs until 200 ms after the last command, the prober while the commands run.
        let (d, cpu, loadAfter, after) = try await withBackground(follow) {
            let d = try await withBackground(probe) {
                try await timed {
                    try await concurrently(callers: callers, count: n) { i in
                        try await app.dispatch(Deposit(account: "w1lag\(i)", amount: 10))
                        acked.set(i, Date())
                    }
                }
            }
            let cpu = processCPUTime() - cpuBefore
            let loadAfter =
                (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first ?? "?"
            let after = store.statistics
            try await Task.sleep(for: .milliseconds(200))
            return (d, cpu, String(loadAfter), after)
        }
        let tx = after.transactions - before.transactions
        report.figure(
            "W1 \(callers) callers, with a reader", store: "postgres", value: Double(n) / d.seconds, unit: "commands/s",
            ceiling: "raw 1-row tx, 4 connections", target: .ratio(atLeast: 3),
            note:
                "\(n) new aggregates, one command each, \(callers) concurrent callers, a reader following the log; \(d.text)"
                + String(
                    format: "; group commit: %d transactions, %.1f appends each on average, largest %d", tx,
                    Double(after.appends - before.appends) / Double(max(tx, 1)), after.largestGroup))
        let p50 = (samples.percentile(0.5) ?? 0) * 1_000
        let p99 = (samples.percentile(0.99) ?? 0) * 1_000
        report.figure(
            "lag p50, recorded_at -> reader, W1 \(callers)", store: "postgres", value: p50, unit: "ms",
            note: "\(samples.count) events; notification-woken readAll below the read horizon")
        report.figure(
            "lag p99, recorded_at -> reader, W1 \(callers)", store: "postgres", value: p99, unit: "ms",
            target: Target(text: "< 20 ms") { value, _ in value < 20 },
            note: "recorded_at is the transaction's start: an upper bound of commit-to-delivery")
        func ms(_ samples: LagSamples, _ p: Double) -> String {
            String(format: "%.1f", (samples.percentile(p) ?? 0) * 1_000)
        }
        let ceilingLogger = Logger(label: "backstage-bench.postgres", factory: { _ in SwiftLogNoOpLogHandler() })
        // The parts: commit acknowledged -> reader (negative when the reader was first), the reads.
        let commitToReader = LagSamples()
        commitToReader.add(zip(acked.values, seen.values).compactMap { a, s in a.flatMap { a in s.map { $0 - a } } })
        // With track_commit_timestamp on (not the default), each transaction's commit time is
        // known: commit -> reader exactly, and recorded_at -> commit (the transaction itself).
        let committed = TimeTable(count: n)
        let recorded = TimeTable(count: n)
        let tracking = try await store.client.query(
            "SELECT current_setting('track_commit_timestamp')", logger: ceilingLogger)
        var tracked = false
        for try await value in tracking.decode(String.self) { tracked = value == "on" }
        if tracked {
            let rows = try await store.client.query(
                """
                SELECT stream, extract(epoch FROM recorded_at)::float8,
                       extract(epoch FROM pg_xact_commit_timestamp((transaction_id::text::bigint % 4294967296)::text::xid))::float8
                FROM \(unescaped: store.schema.rawValue).events WHERE stream LIKE 'account-w1lag%'
                """, logger: ceilingLogger)
            for try await (stream, start, commit) in rows.decode((String, Double, Double?).self) {
                guard let i = Int(stream.dropFirst("account-w1lag".count)) else { continue }
                recorded.set(i, Date(timeIntervalSince1970: start))
                if let commit { committed.set(i, Date(timeIntervalSince1970: commit)) }
            }
            let exact = LagSamples()
            exact.add(zip(committed.values, seen.values).compactMap { c, s in c.flatMap { c in s.map { $0 - c } } })
            let transactions = LagSamples()
            transactions.add(
                zip(recorded.values, committed.values).compactMap { r, c in r.flatMap { r in c.map { $0 - r } } })
            report.figure(
                "lag p99, commit -> reader, W1 \(callers)", store: "postgres",
                value: (exact.percentile(0.99) ?? 0) * 1_000, unit: "ms",
                target: Target(text: "< 20 ms") { value, _ in value < 20 },
                note: "pg_xact_commit_timestamp (track_commit_timestamp = on) to the reader having the event: p50 "
                    + "\(ms(exact, 0.5)) ms, p90 \(ms(exact, 0.9)) ms over \(exact.count) events; the transactions "
                    + "themselves (recorded_at -> commit): p50 \(ms(transactions, 0.5)) ms, p99 \(ms(transactions, 0.99)) ms"
            )
        }
        report.figure(
            "lag p99, commit ack -> reader, W1 \(callers)", store: "postgres",
            value: (commitToReader.percentile(0.99) ?? 0) * 1_000, unit: "ms",
            note:
                "the dispatch's return (after its commit) to the reader having the event: p50 \(ms(commitToReader, 0.5)) ms, "
                + "p90 \(ms(commitToReader, 0.9)) ms; readAll p50 \(ms(reads, 0.5)) ms, p99 \(ms(reads, 0.99)) ms over "
                + "\(reads.count) reads; \(wakes.load(ordering: .relaxed)) wake-ups, \(emptyReads.load(ordering: .relaxed)) "
                + "found nothing; bench CPU \(String(format: "%.2f", cpu / d.seconds)) cores of \(ProcessInfo.processInfo.activeProcessorCount)"
        )
        report.figure(
            "scheduling delay p99 (1 ms sleep overshoot), W1 \(callers)", store: "postgres",
            value: (overshoot.percentile(0.99) ?? 0) * 1_000, unit: "ms",
            note:
                "p50 \(ms(overshoot, 0.5)) ms, p90 \(ms(overshoot, 0.9)) ms over \(overshoot.count) wake-ups of a task "
                + "sleeping 1 ms during the run: what the machine adds to every hop; load average \(loadBefore) before, "
                + "\(loadAfter) after")
    }

    /// W5 across processes: `w5Writers` copies of this program, each with its own store (pool),
    /// dispatch `w5CommandsPerWriter` commands to aggregates of their own at the same time.
    func w5Processes(url: String, schema: String, sizes: Sizes, report: Report) async throws {
        let writers = sizes.w5Writers
        let per = sizes.w5CommandsPerWriter
        let exe = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        var processes: [(Process, Pipe)] = []
        for w in 0..<writers {
            let process = Process()
            process.executableURL = exe
            process.arguments = ["--w5-worker", "\(w)", "--w5-schema", schema, "--w5-commands", "\(per)"]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            processes.append((process, pipe))
        }
        var starts: [Double] = []
        var ends: [Double] = []
        for (process, pipe) in processes {
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            for line in output.split(separator: "\n") where line.hasPrefix("w5 ") {
                let parts = line.split(separator: " ")
                if parts.count == 3, let a = Double(parts[1]), let b = Double(parts[2]) {
                    starts.append(a)
                    ends.append(b)
                }
            }
        }
        guard starts.count == writers, let first = starts.min(), let last = ends.max() else {
            report.note("W5 across processes: a worker failed (\(starts.count) of \(writers) reported)")
            return
        }
        report.figure(
            "W5 \(writers) processes, distinct aggregates", store: "postgres",
            value: Double(writers * per) / (last - first),
            unit: "commands/s", ceiling: "raw 1-row tx, 4 connections",
            note: "\(writers) processes x \(per) commands, each on aggregates of its own (new aggregate per command), "
                + "timed from the first worker's start to the last one's end")
    }

    /// The body of one W5 worker process: prints "w5 <start> <end>" (seconds since 1970).
    static func w5Worker(index: Int, schema: String, commands: Int) async throws {
        guard let url = ProcessInfo.processInfo.environment["BACKSTAGE_POSTGRES_URL"] else { return }
        var configuration = PostgresEventStore.Configuration()
        configuration.schema = schema
        configuration.migrate = false
        try await PostgresEventStore.withStore(url: url, configuration: configuration) { store in
            let app = BackstageApp(store: store, router: try accountRouter())
            // Warm the pool: the timing starts with connections open, as in a running service.
            _ = try await store.headPosition()
            let start = Date().timeIntervalSince1970
            for i in 0..<commands { try await app.dispatch(Deposit(account: "w5p\(index)-\(i)", amount: 1)) }
            let end = Date().timeIntervalSince1970
            print("w5 \(start) \(end)")
        }
    }
}
