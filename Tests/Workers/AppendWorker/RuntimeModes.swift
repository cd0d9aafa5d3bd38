// Modes of the SQLite worker that run a BackstageApp or append from another process
// (issue 8: stale caches, conflicts between processes).
import Backstage
import BackstageSQLite
import Foundation
import Synchronization

func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

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
        try router.route(SellTicket.self, id: { $0.show }) { show, command in try show.sell(command) }
        let app = BackstageApp(store: store, router: router)
        if arguments.count == 5, let start = Double(arguments[4]) { try await waitUntil(millisecondsSince1970: start) }
        let tally = Tally()
        try await sell(app: app, shows: shows, capacity: capacity, attempts: attempts, tally: tally)
        let c = tally.counts.withLock { $0 }
        emit("result sold=\(c.sold) soldOut=\(c.soldOut) conflicts=\(c.conflicts) errors=\(c.errors)")
    },
]

/// Sleeps until a wall-clock instant, so processes started one after another race together.
func waitUntil(millisecondsSince1970 start: Double) async throws {
    let wait = start / 1000 - Date().timeIntervalSince1970
    if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
}

/// What the sellers did.
final class Tally: Sendable {
    let counts = Mutex((sold: 0, soldOut: 0, conflicts: 0, errors: 0))
    let next = Mutex(0)
}

func sell(app: BackstageApp, shows: Int, capacity: Int, attempts: Int, tally: Tally) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<8 {
            group.addTask {
                while true {
                    let n = tally.next.withLock { n -> Int? in
                        guard n < attempts else { return nil }
                        n += 1
                        return n
                    }
                    guard n != nil else { return }
                    let command = SellTicket(show: "s\(Int.random(in: 0..<shows))", capacity: capacity)
                    do {
                        _ = try await app.dispatch(command)
                        tally.counts.withLock { $0.sold += 1 }
                    } catch Show.Rejection.soldOut {
                        tally.counts.withLock { $0.soldOut += 1 }
                    } catch EventStoreError.wrongExpectedVersion {
                        tally.counts.withLock { $0.conflicts += 1 }
                    } catch {
                        FileHandle.standardError.write(Data("sell failed: \(error)\n".utf8))
                        tally.counts.withLock { $0.errors += 1 }
                    }
                }
            }
        }
        try await group.waitForAll()
    }
}

// MARK: A show that must not be oversold (the same types as the PostgreSQL worker's)

struct TicketSold: Event {
    static let typeName = "TicketSold"
    var show: String
}

enum ShowEvent: EventFamily {
    case sold(TicketSold)
    static let members: [EventMember<ShowEvent>] = [.init(TicketSold.self, ShowEvent.sold)]
    var event: any Event {
        switch self {
        case .sold(let e): e
        }
    }
}

struct Show: Aggregate {
    typealias Event = ShowEvent
    enum Rejection: Error { case soldOut }
    static let category = "show"
    var sold = 0
    init() {}
    mutating func apply(_ event: ShowEvent) { sold += 1 }

    func sell(_ command: SellTicket) throws -> [ShowEvent] {
        guard sold < command.capacity else { throw Rejection.soldOut }
        return [.sold(TicketSold(show: command.show))]
    }
}

struct SellTicket: Command {
    typealias Target = Show
    var show: String
    var capacity: Int
}
