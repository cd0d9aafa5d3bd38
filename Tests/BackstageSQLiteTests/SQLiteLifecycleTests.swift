import Backstage
import BackstageSQLite
import Foundation
import ServiceLifecycle
import Testing

/// The store on a database the application owns, its migrator, and its lifecycle.
@Suite("SQLite store lifecycle")
struct SQLiteLifecycleTests {
    @Test("a store on the application's own DatabaseQueue migrates into it, works, and leaves it open")
    func onExistingWriter() async throws {
        let queue = try DatabaseQueue()
        try await queue.write { db in try db.execute(sql: "CREATE TABLE app_users (id INTEGER PRIMARY KEY)") }
        let store = try SQLiteEventStore(database: queue)
        let result = try await store.append(
            [EventData(type: "Happened", data: Data("{}".utf8))], to: "s-1", expected: .noStream, commandID: nil)
        #expect(result.lastVersion == 1)
        let migrations = try await queue.read { db in
            try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier")
        }
        #expect(
            migrations == [
                "backstage-pipelines-v1", "backstage-v1", "backstage-v2-json-text", "backstage-v3-positions",
            ])
        let events = try await queue.read { db in
            try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE name = 'backstage_events'")
        }
        #expect(events?.contains("position INTEGER PRIMARY KEY,") == true)
        #expect(events?.contains("AUTOINCREMENT") == false)
        let tables = try await queue.read { db in
            try String.fetchAll(
                db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'backstage_%'")
        }
        #expect(Set(tables).isSuperset(of: ["backstage_events", "backstage_checkpoints", "backstage_leases"]))
        try await store.close()
        // The application's database stays open; appends through the closed store fail.
        #expect(try await queue.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM app_users") } == 0)
        await #expect(throws: SQLiteStoreError.closed) {
            try await store.append(
                [EventData(type: "Late", data: Data("{}".utf8))], to: "s-1", expected: .any, commandID: nil)
        }
    }

    @Test("a file whose pipeline tables predate the migrator opens and records the migration")
    func olderFileKeepsWorking() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("backstage-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("old.sqlite").path
        try await SQLiteEventStore.withStore(path: path) { store in
            _ = try await store.append(
                [EventData(type: "Happened", data: Data("{}".utf8))], to: "s-1", expected: .noStream, commandID: nil)
            try await store.pipelineDefaults.checkpoints.commit(
                "sub", expected: nil, new: LogPosition(position: 1), token: 0)
            // As a file written before the pipeline tables were a migration.
            try await store.database.write { db in
                try db.execute(sql: "DELETE FROM grdb_migrations WHERE identifier = 'backstage-pipelines-v1'")
            }
        }
        try await SQLiteEventStore.withStore(path: path) { store in
            #expect(
                try await store.pipelineDefaults.checkpoints.checkpoint("sub")?.position == LogPosition(position: 1))
            let recorded = try await store.database.read { db in
                try Int.fetchOne(
                    db, sql: "SELECT count(*) FROM grdb_migrations WHERE identifier = 'backstage-pipelines-v1'")
            }
            #expect(recorded == 1)
        }
    }

    @Test("in a ServiceGroup the store closes on graceful shutdown, after the services listed after it")
    func serviceGroup() async throws {
        let store = try SQLiteEventStore(database: try DatabaseQueue())
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: [.init(service: store)], logger: .init(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            _ = try await store.append(
                [EventData(type: "Happened", data: Data("{}".utf8))], to: "s-1", expected: .noStream, commandID: nil)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        await #expect(throws: SQLiteStoreError.closed) {
            try await store.append(
                [EventData(type: "Late", data: Data("{}".utf8))], to: "s-1", expected: .any, commandID: nil)
        }
    }
}
