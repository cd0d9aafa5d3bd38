import Backstage
import Foundation

// The box office's show events as they are today, and the older shapes stored in the fixtures
// Tests/Fixtures/evolution-v1.sqlite.sql and evolution-v1.postgres.sql, shared by the SQLite and
// PostgreSQL fixture tests:
// - "ShowScheduled" v1 {showID, title}: current.
// - "SeatSold" v1 {show, seat}: the old name of "TicketSold" v1.
// - "TicketSold" v1 {show, seat} -> v2 {showID, ticketID, price} -> v3 (current, adds currency).

package struct FixShowScheduled: Event, Equatable {
    package static let typeName = "ShowScheduled"
    package var showID: String
    package var title: String
    package init(showID: String, title: String) {
        self.showID = showID
        self.title = title
    }
}

package struct FixTicketSold: Event, Equatable {
    package static let typeName = "TicketSold"
    package static let schemaVersion = 3
    package var showID: String
    package var ticketID: String
    package var price: Int
    package var currency: String
    package init(showID: String, ticketID: String, price: Int, currency: String) {
        self.showID = showID
        self.ticketID = ticketID
        self.price = price
        self.currency = currency
    }
}

package struct FixTicketSoldV1: Codable, Sendable {
    package var show: String
    package var seat: String
}

package struct FixTicketSoldV2: Codable, Sendable {
    package var showID: String
    package var ticketID: String
    package var price: Int
    package init(showID: String, ticketID: String, price: Int) {
        self.showID = showID
        self.ticketID = ticketID
        self.price = price
    }
}

package enum FixShowEvent: EventFamily, Equatable {
    case scheduled(FixShowScheduled)
    case ticketSold(FixTicketSold)

    package static let members: [EventMember<FixShowEvent>] = [
        .init(FixShowScheduled.self, FixShowEvent.scheduled),
        .init(FixTicketSold.self, FixShowEvent.ticketSold),
    ]

    package static let upcasters: [Upcaster<FixShowEvent>] = [
        .renamed(from: "SeatSold", version: 1, to: "TicketSold", version: 1),
        Upcaster(from: "TicketSold", version: 1, as: FixTicketSoldV1.self, to: "TicketSold", version: 2) { old in
            FixTicketSoldV2(showID: old.show, ticketID: old.seat, price: 0)
        },
        Upcaster(from: "TicketSold", version: 2, as: FixTicketSoldV2.self) { old in
            .ticketSold(FixTicketSold(showID: old.showID, ticketID: old.ticketID, price: old.price, currency: "EUR"))
        },
    ]
}

package struct FixShow: Aggregate {
    package static let category = "show"
    package var title = ""
    package var tickets: [String] = []
    package var revenue = 0
    package init() {}
    package mutating func apply(_ event: FixShowEvent) {
        switch event {
        case .scheduled(let e): title = e.title
        case .ticketSold(let e):
            tickets.append(e.ticketID)
            revenue += e.price
        }
    }
}

package struct FixSellTicket: Command {
    package typealias Target = FixShow
    package var showID: String
    package var ticketID: String
    package var price: Int
    package init(showID: String, ticketID: String, price: Int) {
        self.showID = showID
        self.ticketID = ticketID
        self.price = price
    }
}
