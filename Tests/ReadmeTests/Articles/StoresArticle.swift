// The code of the "SQLite or PostgreSQL" article (Backstage.docc/StoresAndDeployment.md).
import Backstage
import BackstagePostgres
import BackstageSQLite
import Foundation
import Testing

func openEmbedded(path: String) throws -> SQLiteEventStore {
    var configuration = SQLiteEventStore.Configuration()
    configuration.durability = .full
    return try SQLiteEventStore(path: path, configuration: configuration)
}

func withSharedStore(url: String, _ body: (PostgresEventStore) async throws -> Void) async throws {
    var configuration = PostgresEventStore.Configuration()
    configuration.schema = "box_office"
    try await PostgresEventStore.withStore(url: url, configuration: configuration, body)
}

@Suite("Article: stores")
struct StoresArticle {
    @Test("the embedded store opens with the article's configuration")
    func embedded() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("article-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try openEmbedded(path: directory.appendingPathComponent("store.sqlite").path)
        let app = BackstageApp(store: store, router: try showRouter())
        let result = try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 1))
        #expect(result.version == 1)
    }
}
