import Backstage
import Foundation
import Synchronization

// The race of the multi-process tests: sellers in several processes dispatch SellTicket
// commands to a few hot shows of fixed capacity; no show may be oversold and every command must
// end in a domain answer. Shared by the SQLite and PostgreSQL workers.

/// What the sellers did.
package final class RaceTally: Sendable {
    package init() {}
    package let counts = Mutex((sold: 0, soldOut: 0, conflicts: 0, errors: 0))
    package let next = Mutex(0)
}

package func runSellers(app: BackstageApp, shows: Int, capacity: Int, attempts: Int, tally: RaceTally) async throws {
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
                    let command = RaceSellTicket(show: "s\(Int.random(in: 0..<shows))", capacity: capacity)
                    do {
                        _ = try await app.dispatch(command)
                        tally.counts.withLock { $0.sold += 1 }
                    } catch RaceShow.Rejection.soldOut {
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

package struct RaceTicketSold: Event {
    package static let typeName = "TicketSold"
    package var show: String
    package init(show: String) { self.show = show }
}

package enum RaceShowEvent: EventFamily {
    case sold(RaceTicketSold)
    package static let members: [EventMember<RaceShowEvent>] = [.init(RaceTicketSold.self, RaceShowEvent.sold)]
    package var event: any Event {
        switch self {
        case .sold(let e): e
        }
    }
}

package struct RaceShow: Aggregate {
    package typealias Event = RaceShowEvent
    package enum Rejection: Error { case soldOut }
    package static let category = "show"
    package var sold = 0
    package init() {}
    package mutating func apply(_ event: RaceShowEvent) { sold += 1 }

    package func sell(_ command: RaceSellTicket) throws -> [RaceShowEvent] {
        guard sold < command.capacity else { throw Rejection.soldOut }
        return [.sold(RaceTicketSold(show: command.show))]
    }
}

package struct RaceSellTicket: Command {
    package typealias Target = RaceShow
    package var show: String
    package var capacity: Int
    package init(show: String, capacity: Int) {
        self.show = show
        self.capacity = capacity
    }
}
