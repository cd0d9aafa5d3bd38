import ArgumentParser
import Backstage
import BackstageSQLite
import Foundation
import GRDB

extension SQLiteEventStore: StoreStatistics {
    var writerStatistics: (transactions: Int, appends: Int, largestGroup: Int) {
        let s = statistics
        return (s.transactions, s.appends, s.largestGroup)
    }
}

@main
struct BackstageBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backstage-bench",
        abstract: "Backstage's fixed workloads (W1-W5, dispatch overhead) beside the raw database ceiling, in one run.",
        discussion: """
            Prints a table (workload, store, figure, unit, ceiling, ratio to the ceiling, target) and
            writes the same figures as JSON. Run it in release mode:

              swift run --package-path Benchmarks -c release backstage-bench

            PostgreSQL is measured when BACKSTAGE_POSTGRES_URL is set (eval "$(scripts/postgres start)").
            """)

    @Option(help: "Comma-separated stores to run: memory, sqlite, postgres.")
    var stores = "memory,sqlite,postgres"

    @Option(help: "Where to write the JSON results (default: Benchmarks/results/bench-<time>.json).")
    var json: String?

    @Option(help: "Multiplies every workload's size (0.1 for a quick smoke run); figures at 1 are the issue's.")
    var scale = 1.0

    @Option(help: "Folder for the SQLite files (default: the system temporary folder); removed afterwards.")
    var directory: String?

    @Option(help: "Comma-separated parts to run: dispatch, ceilings, w1, w2, w3, w4, w5 (default: all).")
    var only = "dispatch,ceilings,w1,w2,w3,w4,w5"

    @Option(help: "SQLite durability of the store and its ceilings: full (default), normal, off.")
    var durability = "full"

    mutating func run() async throws {
        let selected = stores.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        for name in selected where !["memory", "sqlite", "postgres"].contains(name) {
            throw ValidationError("unknown store '\(name)': use memory, sqlite or postgres")
        }
        guard ["full", "normal", "off"].contains(durability) else {
            throw ValidationError("unknown durability '\(durability)': use full, normal or off")
        }
        let parts = Set(only.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
        for part in parts where !["dispatch", "ceilings", "w1", "w2", "w3", "w4", "w5"].contains(part) {
            throw ValidationError("unknown part '\(part)': use dispatch, ceilings, w1, w2, w3, w4, w5")
        }
        let sizes = Sizes(scale: scale)
        let report = Report(arguments: Array(CommandLine.arguments.dropFirst()))
        report.setting("scale", "\(scale)")
        report.setting("durability", durability)
        #if DEBUG
            report.note("this is a DEBUG build: figures are meaningless; use -c release")
        #endif
        print("Backstage benchmarks: \(report.results.machine.cores) cores, scale \(scale), stores \(selected.joined(separator: ","))")
        print(Report.header)

        // Distinct ~200-byte payloads, made before any timing.
        let payloads = (0..<1_000).map { samplePayload(account: "a\($0)") }
        let average = payloads.map(\.count).reduce(0, +) / payloads.count
        report.setting("payloadBytes", "\(average)")

        if selected.contains("memory") {
            if parts.contains("dispatch") { try await Workloads.dispatchOverhead(sizes: sizes, report: report) }
            let w = Workloads(
                store: InMemoryEventStore(), storeName: "memory", sizes: sizes, report: report,
                singleRowCeiling: nil, batchCeiling: nil, readCeiling: nil, absoluteTargets: false)
            try await runWorkloads(w, parts: parts, payloads: payloads, beforeW4: {})
        }
        if selected.contains("sqlite") {
            try await runSQLite(sizes: sizes, parts: parts, report: report, payloads: payloads)
        }
        if selected.contains("postgres") {
            try await runPostgres(sizes: sizes, parts: parts, report: report, payloads: payloads)
        }

        report.finish()
        print("\n" + report.table())
        let path = json ?? defaultJSONPath()
        try report.write(json: path)
        print("\nJSON written to \(path)")
    }

    /// Runs the selected workloads in the order W1, W2, W3, W5, W4 (the catch-up reads what the
    /// others stored: first with a plain readAll loop, then through the projection engine).
    func runWorkloads(
        _ w: Workloads, parts: Set<String>, payloads: [Data], beforeW4: () async throws -> Void,
        afterW4: () async throws -> Void = {}
    ) async throws {
        if parts.contains("w1") { try await w.w1() }
        if parts.contains("w2") { try await w.w2() }
        if parts.contains("w3") { try await w.w3(payloads: payloads) }
        if parts.contains("w5") { try await w.w5() }
        if parts.contains("w4") {
            try await beforeW4()
            try await w.w4()
            try await w.w4InMemoryProjection()
            try await afterW4()
        }
    }

    func runSQLite(sizes: Sizes, parts: Set<String>, report: Report, payloads: [Data]) async throws {
        let base = URL(fileURLWithPath: directory ?? FileManager.default.temporaryDirectory.path)
            .appendingPathComponent("backstage-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: base) }
        let (synchronous, level): (String, SQLiteEventStore.Durability) =
            switch durability {
            case "normal": ("NORMAL", .normal)
            case "off": ("OFF", .off)
            default: ("FULL", .full)
            }

        // Ceilings first, on their own file.
        let ceiling = try SQLiteCeiling(
            path: base.appendingPathComponent("ceiling.sqlite").path, synchronous: synchronous, payloads: payloads)
        let ceilingPragmas = try SQLiteCeiling.pragmas(ceiling.pool)
        report.setting("sqlite.ceiling", ceilingPragmas)
        func measureCeilings(_ when: String) throws {
            guard parts.contains("ceilings") else { return }
            let single = try ceiling.singleRowTransactions(count: sizes.ceilingSingleRows)
            report.ceiling(
                "raw 1-row tx", store: "sqlite", value: single, unit: "rows/s", label: "raw 1-row tx, \(when)",
                note: "\(sizes.ceilingSingleRows) transactions of 1 INSERT through GRDB, \(ceilingPragmas)")
            let batch = try ceiling.batchTransactions(
                transactions: sizes.ceilingBatchTransactions, rows: sizes.ceilingBatchRows)
            report.ceiling(
                "raw 1000-row tx", store: "sqlite", value: batch, unit: "rows/s", label: "raw 1000-row tx, \(when)",
                note: "\(sizes.ceilingBatchTransactions) transactions of \(sizes.ceilingBatchRows) INSERTs through GRDB")
        }
        try measureCeilings("before")

        var configuration = SQLiteEventStore.Configuration()
        configuration.durability = level
        let store = try SQLiteEventStore(path: base.appendingPathComponent("events.sqlite").path, configuration: configuration)
        let storePragmas = try SQLiteCeiling.pragmas(store.database)
        report.setting("sqlite.store", storePragmas)
        if storePragmas != ceilingPragmas {
            report.note("the store (\(storePragmas)) and the ceiling (\(ceilingPragmas)) differ in settings")
        }
        var w = Workloads(
            store: store, storeName: "sqlite", sizes: sizes, report: report, singleRowCeiling: "raw 1-row tx",
            batchCeiling: "raw 1000-row tx", readCeiling: "raw read, all columns", absoluteTargets: true)
        w.probe = { which, before in
            guard parts.contains("ceilings") else { return }
            if which == "single" {
                let value = try ceiling.singleRowTransactions(count: sizes.probeSingleRows)
                report.ceiling(
                    "raw 1-row tx", store: "sqlite", value: value, unit: "rows/s", label: "raw 1-row tx, before \(before)",
                    note: "\(sizes.probeSingleRows) transactions of 1 INSERT, measured again for the next figure")
            } else {
                let value = try ceiling.batchTransactions(
                    transactions: sizes.probeBatchTransactions, rows: sizes.ceilingBatchRows)
                report.ceiling(
                    "raw 1000-row tx", store: "sqlite", value: value, unit: "rows/s",
                    label: "raw 1000-row tx, before \(before)",
                    note: "\(sizes.probeBatchTransactions) transactions of \(sizes.ceilingBatchRows) INSERTs, measured again for the next figure")
            }
        }
        // The read ceiling runs on the store's own file, over the rows W4 reads, before and after W4.
        func measureReadCeiling(_ when: String) throws {
            guard parts.contains("ceilings") else { return }
            let read = try SQLiteCeiling.readAll(store.database, pageSize: sizes.w4PageSize)
            report.ceiling(
                "raw read, all columns", store: "sqlite", value: read.rate, unit: "rows/s",
                label: "raw read, all columns, \(when)",
                note: "\(read.rows) rows of the store's file in pages of \(sizes.w4PageSize) through GRDB, every column read")
        }
        try await runWorkloads(
            w, parts: parts, payloads: payloads, beforeW4: { try measureReadCeiling("before") },
            afterW4: {
                // The read model in SQLite tables of the store's file: each batch's upserts and
                // its checkpoint commit in one durable transaction.
                for batchSize in [ProjectionOptions().batchSize, 5_000] {
                    var options = ProjectionOptions()
                    options.batchSize = batchSize
                    options.maxInFlight = max(options.maxInFlight, 2 * batchSize)
                    let model = TypeCountReadModel(name: "w4-sqlite-\(batchSize)", table: "w4_type_counts_\(batchSize)")
                    let projection = try SQLiteProjection(model, database: store.database, options: options)
                    try await w.w4Projection(
                        projection, label: "SQLiteProjection/\(batchSize)",
                        description: "SQLiteProjection upserting a count-per-type table in the store's file",
                        counts: { try await model.counts(store.database) })
                }
            })
        if parts.contains("w4") { try measureReadCeiling("after") }
        try await store.close()
        try measureCeilings("after")
        try ceiling.pool.close()
    }

    func defaultJSONPath() -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        // Benchmarks/results next to this package, wherever the command is run from.
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return package.appendingPathComponent("results/bench-\(formatter.string(from: Date())).json").path
    }
}
