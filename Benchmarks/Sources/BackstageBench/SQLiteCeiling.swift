import Backstage
import BackstageSQLite
import Foundation
import GRDB

/// The fastest SQLite can do on this machine through GRDB, with the store's settings (WAL,
/// `synchronous=FULL`) and the store's row shape (the store's own events table, created by its
/// migrations, and about 200-byte JSON payloads), but none of the store's work (no version
/// check, no savepoint, no command row, no group commit).
struct SQLiteCeiling {
    let pool: DatabasePool
    let payloads: [Data]

    static let insertSQL = """
        INSERT INTO backstage_events (stream, category, version, id, type, schema_version, data,
            command_id, causation_id, correlation_id, fields, recorded_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """

    /// Opens a new database at `path` with the same GRDB and SQLite settings the store uses.
    init(path: String, synchronous: String, payloads: [Data]) throws {
        var config = GRDB.Configuration()
        config.busyMode = .timeout(10)
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = \(synchronous)") }
        pool = try DatabasePool(path: path, configuration: config)
        // GRDB turns WAL on for the writer after `prepareDatabase` and sets synchronous=NORMAL
        // with it: set the wanted level again on the writer, the only connection that commits.
        try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = \(synchronous)") }
        // The store's own schema, created by its migrations (its events table, indexes and
        // triggers, which fire only on UPDATE and DELETE), so the ceiling writes the same pages.
        _ = try SQLiteEventStore(database: pool)
        self.payloads = payloads
    }

    /// The settings SQLite reports for the writer connection of `pool` (the one that commits).
    static func pragmas(_ pool: any DatabaseWriter) throws -> String {
        try pool.write { db in
            let journal = try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "?"
            let sync = try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1
            let names = [0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"]
            return "journal_mode=\(journal), synchronous=\(names[sync] ?? "\(sync)")"
        }
    }

    private func insert(_ statement: Statement, stream: String, version: Int, index: Int) throws {
        let id = UUIDv7.next()
        try statement.execute(arguments: [
            stream, "raw", version, id, "Deposited", 1, payloads[index % payloads.count], id, id, id, nil,
            Date().timeIntervalSince1970,
        ])
    }

    /// `count` transactions of one INSERT each, in sequence. Returns rows (= transactions) per second.
    func singleRowTransactions(count: Int) throws -> Double {
        let tag = UUID().uuidString.prefix(8)
        let start = ContinuousClock.now
        for i in 0..<count {
            try pool.writeWithoutTransaction { db in
                try db.inTransaction(.immediate) {
                    try insert(
                        db.cachedStatement(sql: Self.insertSQL), stream: "raw-single-\(tag)-\(i)", version: 1, index: i)
                    return .commit
                }
            }
        }
        return Double(count) / (ContinuousClock.now - start).seconds
    }

    /// `transactions` transactions of `rows` INSERTs each, in sequence. Returns rows per second.
    func batchTransactions(transactions: Int, rows: Int) throws -> Double {
        let tag = UUID().uuidString.prefix(8)
        let start = ContinuousClock.now
        for t in 0..<transactions {
            try pool.writeWithoutTransaction { db in
                try db.inTransaction(.immediate) {
                    let statement = try db.cachedStatement(sql: Self.insertSQL)
                    for r in 0..<rows {
                        try insert(statement, stream: "raw-batch-\(tag)-\(t)", version: r + 1, index: r)
                    }
                    return .commit
                }
            }
        }
        return Double(transactions * rows) / (ContinuousClock.now - start).seconds
    }

    /// Reads every row of the events table of `pool` in pages of `pageSize`, in log order,
    /// materialising every column as a Swift value, and counts rows per type. Returns rows per
    /// second and the rows read.
    static func readAll(_ pool: any DatabaseReader, pageSize: Int) throws -> (rate: Double, rows: Int) {
        let start = ContinuousClock.now
        var after: Int64 = 0
        var rows = 0
        var counts: [String: Int] = [:]
        while true {
            let (read, last) = try pool.read { db -> (Int, Int64) in
                let cursor = try Row.fetchCursor(
                    db.cachedStatement(
                        sql: """
                            SELECT position, stream, version, id, type, schema_version, data, command_id,
                                causation_id, correlation_id, fields, recorded_at
                            FROM backstage_events WHERE position > ? ORDER BY position LIMIT ?
                            """), arguments: [after, pageSize])
                var n = 0
                var last = after
                while let row = try cursor.next() {
                    last = row[0]
                    let stream: String = row[1]
                    let version: Int64 = row[2]
                    let id: Data = row[3]
                    let type: String = row[4]
                    let schema: Int = row[5]
                    let data: Data = row[6]
                    let command: Data? = row[7]
                    let causation: Data? = row[8]
                    let correlation: Data? = row[9]
                    let fields: String? = row[10]
                    let recorded: Double = row[11]
                    counts[type, default: 0] += 1
                    // Keep the values alive so the optimiser cannot drop the reads.
                    if stream.isEmpty && version < 0 && id.isEmpty && schema < 0 && data.isEmpty
                        && command == nil && causation == nil && correlation == nil && fields == "?" && recorded < 0
                    {
                        n -= 1
                    }
                    n += 1
                }
                return (n, last)
            }
            if read == 0 { break }
            rows += read
            after = last
        }
        return (Double(rows) / (ContinuousClock.now - start).seconds, rows)
    }
}
