import Backstage
import BackstageSQLite
import Foundation
import GRDB
import Testing

@Suite("SQLite writer durability")
struct WriterDurabilityTests {
    // GRDB sets synchronous=NORMAL on the writer when it enables WAL, after `prepareDatabase`
    // ran: the writer (the only connection that commits) must still have the configured level.
    @Test(
        "the writer connection commits with the configured synchronous level",
        arguments: [
            (SQLiteEventStore.Durability.full, 2), (SQLiteEventStore.Durability.normal, 1),
            (SQLiteEventStore.Durability.off, 0),
        ])
    func writerSynchronous(durability: SQLiteEventStore.Durability, expected: Int) async throws {
        let file = try TemporaryDatabase()
        var configuration = SQLiteEventStore.Configuration()
        configuration.durability = durability
        let store = try SQLiteEventStore(path: file.path, configuration: configuration)
        _ = try await store.append(
            [EventData(type: "Happened", data: Data("{}".utf8))], to: "s-1", expected: .noStream, commandID: nil)
        let writer = try await store.database.write { try Int.fetchOne($0, sql: "PRAGMA synchronous") }
        #expect(writer == expected)
        let journal = try await store.database.write { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
        #expect(journal == "wal")
        try await store.close()
    }
}
