import Backstage
import BackstageSQLite
import Foundation
import GRDB

/// The `sums` read model of the SQLite multi-process tests: per stream, the total of the `by`
/// fields of its `TallyBumped` events. The test process and the SQLite worker use the same one.
package struct SQLiteSumsModel: SQLiteReadModel {
    package init() {}
    package let name = "sums"
    package let tables = ["sums"]
    package let filter = EventFilter(types: ["TallyBumped"])

    package func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql: "CREATE TABLE \(try tables.table("sums")) (stream TEXT PRIMARY KEY, total INTEGER NOT NULL)")
    }

    package func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
        struct Body: Decodable { var by: Int }
        let body = try JSONDecoder().decode(Body.self, from: event.data)
        try db.execute(
            sql: """
                INSERT INTO \(try tables.table("sums")) (stream, total) VALUES (?, ?)
                ON CONFLICT (stream) DO UPDATE SET total = total + excluded.total
                """, arguments: [event.stream, body.by])
    }
}
