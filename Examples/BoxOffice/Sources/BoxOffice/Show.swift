import Backstage
import BackstageMacros

// The box office: a show has a seat capacity; tickets are added to it up to that capacity, then
// sold to buyers and refunded. Every change is an event; the state of a show is rebuilt from them.

// MARK: Events: facts, stored forever under a stable type name.

/// A show was put on the programme with a number of seats.
public struct ShowScheduled: Event, Hashable {
    public static let typeName = "ShowScheduled"
    /// The show.
    public var showID: String
    /// The show's title.
    public var title: String
    /// How many tickets the show can have.
    public var capacity: Int

    /// Creates the event.
    public init(showID: String, title: String, capacity: Int) {
        self.showID = showID
        self.title = title
        self.capacity = capacity
    }
}

/// A ticket was added to a show and put on sale.
public struct TicketAdded: Event, Hashable {
    public static let typeName = "TicketAdded"
    /// The show.
    public var showID: String
    /// The new ticket.
    public var ticketID: String

    /// Creates the event.
    public init(showID: String, ticketID: String) {
        self.showID = showID
        self.ticketID = ticketID
    }
}

/// A ticket was sold to a buyer.
public struct TicketSold: Event, Hashable {
    public static let typeName = "TicketSold"
    /// The show.
    public var showID: String
    /// The ticket sold.
    public var ticketID: String
    /// Who bought it.
    public var buyer: String

    /// Creates the event.
    public init(showID: String, ticketID: String, buyer: String) {
        self.showID = showID
        self.ticketID = ticketID
        self.buyer = buyer
    }
}

/// A sold ticket was refunded; it is on sale again.
public struct TicketRefunded: Event, Hashable {
    public static let typeName = "TicketRefunded"
    /// The show.
    public var showID: String
    /// The ticket refunded.
    public var ticketID: String

    /// Creates the event.
    public init(showID: String, ticketID: String) {
        self.showID = showID
        self.ticketID = ticketID
    }
}

/// Every event of a show. `@EventFamily` writes its `members` and its `event` switch (no
/// reflection: every sale appends one).
@EventFamily
public enum ShowEvent: Hashable {
    case scheduled(ShowScheduled)
    case ticketAdded(TicketAdded)
    case ticketSold(TicketSold)
    case ticketRefunded(TicketRefunded)

    /// The ticket the event is about, if any.
    public var ticketID: String? {
        switch self {
        case .scheduled: nil
        case .ticketAdded(let e): e.ticketID
        case .ticketSold(let e): e.ticketID
        case .ticketRefunded(let e): e.ticketID
        }
    }
}

// MARK: Commands: requests that the show may reject. Each names its show and decides on its state
// (the `Show` parameter of `decide` makes it a command of the show).

/// Puts a new show on the programme.
public struct ScheduleShow: DecidingCommand, Codable, Hashable {
    /// The new show's id.
    public var showID: String
    /// Its title.
    public var title: String
    /// Its number of seats (1 or more).
    public var capacity: Int

    /// Creates the command.
    public init(showID: String, title: String, capacity: Int) {
        self.showID = showID
        self.title = title
        self.capacity = capacity
    }

    public var aggregateID: String { showID }

    public func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
        guard show.id == nil else { throw .alreadyScheduled(showID) }
        guard capacity > 0 else { throw .invalidCapacity(capacity) }
        return [.scheduled(ShowScheduled(showID: showID, title: title, capacity: capacity))]
    }
}

/// Adds a ticket to a show, up to its capacity.
public struct AddTicket: DecidingCommand, Codable, Hashable {
    /// The show.
    public var showID: String
    /// The new ticket's id.
    public var ticketID: String

    /// Creates the command.
    public init(showID: String, ticketID: String) {
        self.showID = showID
        self.ticketID = ticketID
    }

    public var aggregateID: String { showID }

    public func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
        guard show.id != nil else { throw .unknownShow(showID) }
        guard show.tickets[ticketID] == nil else { throw .duplicateTicket(ticketID) }
        guard show.tickets.count < show.capacity else { throw .capacityReached(capacity: show.capacity) }
        return [.ticketAdded(TicketAdded(showID: showID, ticketID: ticketID))]
    }
}

/// Sells the show's next ticket on sale to a buyer.
public struct SellTicket: DecidingCommand, Codable, Hashable {
    /// The show.
    public var showID: String
    /// Who buys the ticket.
    public var buyer: String

    /// Creates the command.
    public init(showID: String, buyer: String) {
        self.showID = showID
        self.buyer = buyer
    }

    public var aggregateID: String { showID }

    public func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
        guard show.id != nil else { throw .unknownShow(showID) }
        guard let ticket = show.onSale.first else { throw .soldOut(showID) }
        return [.ticketSold(TicketSold(showID: showID, ticketID: ticket, buyer: buyer))]
    }
}

/// Refunds a sold ticket; it goes back on sale.
public struct RefundTicket: DecidingCommand, Codable, Hashable {
    /// The show.
    public var showID: String
    /// The ticket to refund.
    public var ticketID: String

    /// Creates the command.
    public init(showID: String, ticketID: String) {
        self.showID = showID
        self.ticketID = ticketID
    }

    public var aggregateID: String { showID }

    public func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
        guard show.id != nil else { throw .unknownShow(showID) }
        switch show.tickets[ticketID] {
        case nil: throw .unknownTicket(ticketID)
        case .onSale: throw .notSold(ticketID)
        case .refunded: throw .alreadyRefunded(ticketID)
        case .sold: return [.ticketRefunded(TicketRefunded(showID: showID, ticketID: ticketID))]
        }
    }
}

// MARK: Rejections: the business rules, as typed errors.

/// Why a show rejected a command.
public enum ShowError: Error, Hashable, CustomStringConvertible {
    /// The show was never scheduled.
    case unknownShow(String)
    /// A show with this id is scheduled already.
    case alreadyScheduled(String)
    /// A show needs at least one seat.
    case invalidCapacity(Int)
    /// The show has as many tickets as seats.
    case capacityReached(capacity: Int)
    /// A ticket with this id exists already.
    case duplicateTicket(String)
    /// No ticket is on sale.
    case soldOut(String)
    /// The show has no ticket with this id.
    case unknownTicket(String)
    /// The ticket is on sale: there is nothing to refund.
    case notSold(String)
    /// The ticket was refunded already and not sold again.
    case alreadyRefunded(String)

    /// A stable name of the rule, for logs and API clients.
    public var code: String {
        switch self {
        case .unknownShow: "unknownShow"
        case .alreadyScheduled: "alreadyScheduled"
        case .invalidCapacity: "invalidCapacity"
        case .capacityReached: "capacityReached"
        case .duplicateTicket: "duplicateTicket"
        case .soldOut: "soldOut"
        case .unknownTicket: "unknownTicket"
        case .notSold: "notSold"
        case .alreadyRefunded: "alreadyRefunded"
        }
    }

    public var description: String {
        switch self {
        case .unknownShow(let show): "show \(show) is not scheduled"
        case .alreadyScheduled(let show): "show \(show) is scheduled already"
        case .invalidCapacity(let capacity): "a show needs at least one seat, not \(capacity)"
        case .capacityReached(let capacity): "the show has all its \(capacity) tickets"
        case .duplicateTicket(let ticket): "ticket \(ticket) exists already"
        case .soldOut(let show): "show \(show) is sold out"
        case .unknownTicket(let ticket): "no ticket \(ticket) for this show"
        case .notSold(let ticket): "ticket \(ticket) was not sold"
        case .alreadyRefunded(let ticket): "ticket \(ticket) was refunded already"
        }
    }
}

// MARK: The aggregate: evolves with events (the commands above decide on it).

/// Where a ticket stands.
public enum TicketStatus: String, Codable, Hashable, Sendable {
    /// On sale, never sold.
    case onSale
    /// Sold to a buyer.
    case sold
    /// Refunded, and on sale again.
    case refunded
}

/// A show and its tickets.
public struct Show: Aggregate, Codable, Hashable {
    public typealias Rejection = ShowError
    public static let category = "show"

    /// The show's id; nil until it is scheduled.
    public private(set) var id: String?
    /// The title.
    public private(set) var title = ""
    /// The number of seats.
    public private(set) var capacity = 0
    /// Every ticket and where it stands.
    public private(set) var tickets: [String: TicketStatus] = [:]
    /// Tickets on sale, in the order they are sold.
    public private(set) var onSale: [String] = []

    /// A show that was never scheduled.
    public init() {}

    /// Tickets sold and not refunded.
    public var ticketsSold: Int { tickets.count - onSale.count }

    public mutating func apply(_ event: ShowEvent) {
        switch event {
        case .scheduled(let e):
            id = e.showID
            title = e.title
            capacity = e.capacity
        case .ticketAdded(let e):
            tickets[e.ticketID] = .onSale
            onSale.append(e.ticketID)
        case .ticketSold(let e):
            tickets[e.ticketID] = .sold
            onSale.removeAll { $0 == e.ticketID }
        case .ticketRefunded(let e):
            tickets[e.ticketID] = .refunded
            onSale.append(e.ticketID)
        }
    }
}

// MARK: The router: every command of the box office, in one place.

extension Router {
    /// The box office's routes: each command goes to the show it names.
    public static func boxOffice() throws(RoutingError) -> Router {
        var router = try Router(ScheduleShow.self, AddTicket.self, SellTicket.self, RefundTicket.self)
        try router.routeReservations()
        return router
    }
}
