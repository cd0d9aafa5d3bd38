// The code of the running-stores article (Backstage.docc/RunningStores.md) and of the README's
// "Running a store in an application" section.
import Backstage
import BackstagePostgres
import BackstageSQLite
import BackstageTesting
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// The application's HTTP routes (one, enough for the article's service group).
func routes(_ app: BackstageApp) -> Hummingbird.Router<BasicRequestContext> {
    let router = Hummingbird.Router()
    router.post("shows/:id") { _, context in
        let id = try context.parameters.require("id")
        try await app.dispatch(ScheduleShow(showID: id, capacity: 100))
        return HTTPResponse.Status.created
    }
    return router
}

/// An application on PostgreSQL: the store first in the service group (never run by the tests).
func runApplication(tickets: any Projection, logger: Logger) async throws {
    let store = try PostgresEventStore(url: "postgres://app:secret@127.0.0.1:5432/app")
    let app = BackstageApp(store: store, router: try showRouter())
    let pipelines = try PipelineService(app: app, projections: [tickets])
    let http = Application(router: routes(app), configuration: .init(address: .hostname("0.0.0.0", port: 8080)))
    let group = ServiceGroup(
        services: [store, pipelines, http], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    try await group.run()
}

/// A script on PostgreSQL: the scoped form.
func scheduleInScript(url: String) async throws {
    try await PostgresEventStore.withStore(url: url) { store in
        let app = BackstageApp(store: store, router: try showRouter())
        try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 2))
    }
}

/// The SQLite store in the application's own GRDB database.
func storeNextToOwnTables(migrator: DatabaseMigrator) throws -> SQLiteEventStore {
    let pool = try DatabasePool(path: "app.sqlite")  // your application's database
    try migrator.migrate(pool)  // your own tables
    let store = try SQLiteEventStore(database: pool)  // Backstage's tables, prefixed backstage_
    return store
}

/// A multi-process test's worker, found through BackstageTesting.
func runWorker(url: String) async throws -> Int32 {
    let process = Process()
    process.executableURL = try testExecutable(named: "my-worker")
    process.arguments = ["serve", url]
    try process.run()
    let status = await process.exited()  // without blocking a thread of the cooperative pool
    return status
}
