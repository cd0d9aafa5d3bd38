// Modes of the PostgreSQL worker for the aggregate runtime (issue 8: stale caches).
import Backstage
import BackstagePostgres
import BackstageTestSupport
import Foundation

/// `append <url> <schema> <stream> <type> <json>`: appends one event (expected version: any)
/// from this process and prints `appended <stream version>`.
func runAppendMode(_ arguments: [String]) async throws {
    guard arguments.count == 7 else { fail("usage: append <url> <schema> <stream> <type> <json>") }
    try await PostgresEventStore.withStore(
        url: arguments[2], configuration: storeConfiguration(schema: arguments[3], connections: 1)
    ) { store in
        let result = try await store.append(
            [EventData(type: arguments[5], data: Data(arguments[6].utf8))], to: arguments[4], expected: .any,
            commandID: nil)
        emit("appended \(result.lastVersion)")
    }
}

/// `race <url> <schema> <shows> <capacity> <attempts> <start at, ms since 1970>`: the `sell` mode,
/// started at a wall-clock instant so that processes launched one after another really race.
func runRaceMode(_ arguments: [String]) async throws {
    guard arguments.count == 8, let shows = Int(arguments[4]), let capacity = Int(arguments[5]),
        let attempts = Int(arguments[6]), let start = Double(arguments[7])
    else { fail("usage: race <url> <schema> <shows> <capacity> <attempts> <start at, ms since 1970>") }
    try await PostgresEventStore.withStore(url: arguments[2], configuration: storeConfiguration(schema: arguments[3])) {
        store in
        var router = Router()
        try router.route(RaceSellTicket.self, id: { $0.show }) { show, command in try show.sell(command) }
        let app = BackstageApp(store: store, router: router)
        _ = try await store.headPosition()  // the pool is connected before the start
        let wait = start / 1000 - Date().timeIntervalSince1970
        if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
        let tally = RaceTally()
        try await runSellers(app: app, shows: shows, capacity: capacity, attempts: attempts, tally: tally)
        let c = tally.counts.withLock { $0 }
        emit("result sold=\(c.sold) soldOut=\(c.soldOut) conflicts=\(c.conflicts) errors=\(c.errors)")
    }
}
