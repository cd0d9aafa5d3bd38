// The code of the projection-tables article (Backstage.docc/ProjectionTablesAndViews.md).
import Backstage
import BackstageSQLite

enum ProjectionTablesArticle {
    struct TicketsReadModel: SQLiteReadModel {
        let name = "tickets"  // the projection's name
        let tables = ["tickets", "seats"]  // base names of its tables
        // ...

        func createTables(in db: Database, tables: ProjectionTables) throws {
            try db.execute(sql: "CREATE TABLE \(try tables.table("tickets")) (id TEXT PRIMARY KEY, show TEXT NOT NULL)")
            try db.execute(sql: "CREATE TABLE \(try tables.table("seats")) (id TEXT PRIMARY KEY, row TEXT NOT NULL)")
        }

        func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
            guard event.type == "TicketAdded" else { return }
            try db.execute(
                sql: "INSERT INTO \(try tables.table("tickets")) (id, show) VALUES (?, ?)",
                arguments: [event.id.uuidString, event.stream])
        }
    }
}
