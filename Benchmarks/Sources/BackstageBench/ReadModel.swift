import Backstage
import BackstageSQLite
import Foundation
import GRDB

/// W4's read model in SQLite: one row per event type with its count, upserted per event.
struct TypeCountReadModel: SQLiteReadModel {
    let name: String
    let table: String
    var tables: [String] { [table] }

    func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql: "CREATE TABLE IF NOT EXISTS \(try tables.table(table)) (type TEXT PRIMARY KEY, count INTEGER NOT NULL)"
        )
    }

    func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO \(try tables.table(table)) (type, count) VALUES (?, 1)
                ON CONFLICT (type) DO UPDATE SET count = count + 1
                """
        ).execute(arguments: [event.type])
    }

    /// The counts readers see (through the view named after the table).
    func counts(_ database: any DatabaseReader) async throws -> [String: Int] {
        let table = self.table
        return try await database.read { db in
            var counts: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT type, count FROM \(table)") { counts[row[0]] = row[1] }
            return counts
        }
    }
}
