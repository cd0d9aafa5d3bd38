import Backstage
import BackstagePostgres
import BackstageTestSupport
import Foundation
import Logging
import ServiceLifecycle

/// `serve <url> <schema>`: the `counts` projection (PostgresProjection + PostgresLeadership) in a
/// PipelineService run by a ServiceGroup with graceful shutdown on SIGTERM.
func serveMode(_ arguments: [String]) async throws {
    guard arguments.count == 4 else { fail("usage: serve <url> <schema>") }
    try await PostgresEventStore.withStore(
        url: arguments[2], configuration: storeConfiguration(schema: arguments[3])
    ) { store in
        let service = try countsService(store)
        let group = ServiceGroup(
            services: [service], gracefulShutdownSignals: [.sigterm],
            logger: Logger(label: "backstage-postgres-worker"))
        emit("started")
        try await group.run()
    }
    emit("exited")
}
