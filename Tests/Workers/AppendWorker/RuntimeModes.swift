// Modes of the SQLite worker that run a BackstageApp or append from another process
// (issue 8: stale caches, conflicts between processes).
import Backstage
import BackstageSQLite
import BackstageTestSupport
import Foundation
import Synchronization

func usage(_ message: String) -> Never {
    FileHandle.standardError.write(Data("backstage-append-worker: usage: \(message)\n".utf8))
    exit(2)
}

let runtimeModes: [String: @Sendable ([String]) async throws -> Void] = [
    "append": { arguments in
        guard arguments.count == 4 else { usage("append <path> <stream> <type> <json>") }
        let store = try SQLiteEventStore(path: arguments[0])
        let result = try await store.append(
            [EventData(type: arguments[2], data: Data(arguments[3].utf8))], to: arguments[1], expected: .any,
            commandID: nil)
        emit("appended \(result.lastVersion)")
    },
    "sell": { arguments in
        guard arguments.count == 4 || arguments.count == 5, let shows = Int(arguments[1]),
            let capacity = Int(arguments[2]), let attempts = Int(arguments[3])
        else { usage("sell <path> <shows> <capacity> <attempts> [<start at, ms since 1970>]") }
        let store = try SQLiteEventStore(path: arguments[0])
        var router = Router()
        try router.route(RaceSellTicket.self, id: { $0.show }) { show, command in try show.sell(command) }
        let app = BackstageApp(store: store, router: router)
        if arguments.count == 5, let start = Double(arguments[4]) { try await waitUntil(millisecondsSince1970: start) }
        let tally = RaceTally()
        try await runSellers(app: app, shows: shows, capacity: capacity, attempts: attempts, tally: tally)
        let c = tally.counts.withLock { $0 }
        emit("result sold=\(c.sold) soldOut=\(c.soldOut) conflicts=\(c.conflicts) errors=\(c.errors)")
    },
]

/// Sleeps until a wall-clock instant, so processes started one after another race together.
func waitUntil(millisecondsSince1970 start: Double) async throws {
    let wait = start / 1000 - Date().timeIntervalSince1970
    if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
}
