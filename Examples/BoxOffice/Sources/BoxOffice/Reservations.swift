import Backstage
import BackstageMacros
import Foundation

// Reservations: reserving seats holds them (tickets sold to the reservation) and starts a
// reservation process that releases them after a hold time unless the reservation is paid.
// The process coordinates two aggregates (Reservation and Show) over time.

/// Seats were reserved for a customer, to be paid within the hold time.
public struct SeatsReserved: Event, Hashable {
    public static let typeName = "SeatsReserved"
    public var reservationID: String
    public var showID: String
    public var customer: String
    public var seats: Int
    public init(reservationID: String, showID: String, customer: String, seats: Int) {
        self.reservationID = reservationID
        self.showID = showID
        self.customer = customer
        self.seats = seats
    }
}

/// The reservation was paid: its seats are the customer's.
public struct ReservationPaid: Event, Hashable {
    public static let typeName = "ReservationPaid"
    public var reservationID: String
    public init(reservationID: String) { self.reservationID = reservationID }
}

/// The hold time ran out before payment: the seats go back on sale.
public struct ReservationReleased: Event, Hashable {
    public static let typeName = "ReservationReleased"
    public var reservationID: String
    public init(reservationID: String) { self.reservationID = reservationID }
}

/// The events of a reservation.
@EventFamily
public enum ReservationEvent: Hashable {
    case reserved(SeatsReserved)
    case paid(ReservationPaid)
    case released(ReservationReleased)
}

/// Why a reservation command was rejected.
public enum ReservationError: Error, Hashable, CustomStringConvertible, RejectionMarker {
    case alreadyReserved(String)
    case unknownReservation(String)
    case alreadyPaid(String)
    case alreadyReleased(String)
    case invalidSeats(Int)

    /// A stable code for the HTTP API.
    public var code: String {
        switch self {
        case .alreadyReserved: "alreadyReserved"
        case .unknownReservation: "unknownReservation"
        case .alreadyPaid: "alreadyPaid"
        case .alreadyReleased: "alreadyReleased"
        case .invalidSeats: "invalidSeats"
        }
    }

    public var description: String {
        switch self {
        case .alreadyReserved(let r): "reservation \(r) exists already"
        case .unknownReservation(let r): "no reservation \(r)"
        case .alreadyPaid(let r): "reservation \(r) is paid already"
        case .alreadyReleased(let r): "reservation \(r) was released: its hold time ran out"
        case .invalidSeats(let n): "a reservation holds 1 to 10 seats, not \(n)"
        }
    }
}

/// Where a reservation stands.
public enum ReservationStatus: String, Codable, Hashable, Sendable {
    case none, held, paid, released
}

/// One reservation.
public struct Reservation: Aggregate, Codable, Hashable {
    public typealias Event = ReservationEvent
    public typealias Rejection = ReservationError
    public static let category = "reservation"
    public private(set) var status = ReservationStatus.none
    public private(set) var showID = ""
    public private(set) var customer = ""
    public private(set) var seats = 0
    public init() {}
    public mutating func apply(_ event: ReservationEvent) {
        switch event {
        case .reserved(let e):
            status = .held
            showID = e.showID
            customer = e.customer
            seats = e.seats
        case .paid: status = .paid
        case .released: status = .released
        }
    }
}

/// Reserves seats of a show for a customer.
public struct ReserveSeats: Command, Codable, Hashable {
    public typealias Target = Reservation
    public var reservationID: String
    public var showID: String
    public var customer: String
    public var seats: Int
    public init(reservationID: String, showID: String, customer: String, seats: Int) {
        self.reservationID = reservationID
        self.showID = showID
        self.customer = customer
        self.seats = seats
    }
}

/// Pays a held reservation.
public struct PayReservation: Command, Codable, Hashable {
    public typealias Target = Reservation
    public var reservationID: String
    public init(reservationID: String) { self.reservationID = reservationID }
}

/// Releases an unpaid reservation (scheduled by the reservation process at the end of the hold time).
public struct ReleaseReservation: Command, Codable, Hashable {
    public typealias Target = Reservation
    public var reservationID: String
    public init(reservationID: String) { self.reservationID = reservationID }
}

extension Router {
    /// Adds the reservation routes to the box office's router.
    public mutating func routeReservations() throws(RoutingError) {
        try route(ReserveSeats.self, id: \.reservationID) { r, c throws(ReservationError) in
            guard r.status == .none else { throw .alreadyReserved(c.reservationID) }
            guard (1...10).contains(c.seats) else { throw .invalidSeats(c.seats) }
            return [
                .reserved(
                    SeatsReserved(
                        reservationID: c.reservationID, showID: c.showID, customer: c.customer, seats: c.seats))
            ]
        }
        try route(PayReservation.self, id: \.reservationID) { r, c throws(ReservationError) in
            try r.ending(c.reservationID, with: .paid(ReservationPaid(reservationID: c.reservationID)))
        }
        try route(ReleaseReservation.self, id: \.reservationID) { r, c throws(ReservationError) in
            try r.ending(c.reservationID, with: .released(ReservationReleased(reservationID: c.reservationID)))
        }
    }
}

extension Reservation {
    /// Paying and releasing end a held reservation with `event`; any other status is the rejection.
    fileprivate func ending(_ id: String, with event: ReservationEvent) throws(ReservationError) -> [ReservationEvent] {
        switch status {
        case .none: throw .unknownReservation(id)
        case .paid: throw .alreadyPaid(id)
        case .released: throw .alreadyReleased(id)
        case .held: return [event]
        }
    }
}

/// What the reservation process reads: the reservation's events and the show's sales and refunds.
@EventFamily
public enum ReservationFlowEvent: Hashable {
    case reserved(SeatsReserved)
    case paid(ReservationPaid)
    case released(ReservationReleased)
    case ticketSold(TicketSold)
}

/// The buyer name under which a reservation holds its tickets.
public func reservationBuyer(_ reservationID: String) -> String { "reservation:\(reservationID)" }

/// The state of one reservation's process.
public struct ReservationProcessState: Codable, Hashable, Sendable {
    public var showID = ""
    /// The tickets held for the reservation (sold to it).
    public var tickets: [String] = []
    public init() {}
}

/// The reservation process: reserving seats holds them (one `SellTicket` per seat, bought by the
/// reservation) and schedules the release after `holdTime`; paying cancels the release; a
/// release refunds the held tickets, which puts them back on sale.
public struct ReservationProcess: ProcessManager {
    public let name = "reservations"
    /// How long seats are held before an unpaid reservation is released.
    public var holdTime: Duration
    public let initialState = ReservationProcessState()
    public init(holdTime: Duration = .seconds(15 * 60)) { self.holdTime = holdTime }

    public var options: ProjectionOptions { ProjectionOptions(batchTimeout: .milliseconds(1)) }

    /// The release's cancel key.
    public static func releaseKey(_ reservationID: String) -> String { "release-\(reservationID)" }

    public func route(_ envelope: Envelope<ReservationFlowEvent>) -> ProcessRouting {
        switch envelope.event {
        case .reserved(let e): return .start(e.reservationID)
        case .paid(let e): return .stop(e.reservationID)
        case .released(let e): return .stop(e.reservationID)
        case .ticketSold(let e):
            let prefix = reservationBuyer("")
            guard e.buyer.hasPrefix(prefix) else { return .ignore }
            return .continue(String(e.buyer.dropFirst(prefix.count)))
        }
    }

    public func handle(_ envelope: Envelope<ReservationFlowEvent>, state: ReservationProcessState) throws
        -> [ProcessAction]
    {
        switch envelope.event {
        case .reserved(let e):
            let hold = (0..<e.seats).map { _ in
                ProcessAction.dispatch(SellTicket(showID: e.showID, buyer: reservationBuyer(e.reservationID)))
            }
            return hold + [
                .schedule(
                    ReleaseReservation(reservationID: e.reservationID), after: holdTime,
                    key: Self.releaseKey(e.reservationID))
            ]
        case .paid(let e):
            return [.cancel(key: Self.releaseKey(e.reservationID))]
        case .released:
            return state.tickets.map { .dispatch(RefundTicket(showID: state.showID, ticketID: $0)) }
        case .ticketSold:
            return []
        }
    }

    /// A rejected command (a sold-out show, a reservation paid meanwhile) is skipped; other errors are retried.
    public func commandFailed(_ failure: CommandFailure) -> CommandFailureAction {
        if failure.error is ShowError || failure.error is ReservationError { return .skip }
        return .defaultAction(for: failure)
    }

    public func apply(_ envelope: Envelope<ReservationFlowEvent>, to state: inout ReservationProcessState) {
        switch envelope.event {
        case .reserved(let e): state.showID = e.showID
        case .ticketSold(let e): state.tickets.append(e.ticketID)
        case .paid, .released: break
        }
    }
}

extension CommandCatalog {
    /// The box office's commands the scheduler dispatches.
    public static var boxOffice: CommandCatalog {
        .of([
            ScheduleShow.self, AddTicket.self, SellTicket.self, RefundTicket.self, ReserveSeats.self,
            PayReservation.self, ReleaseReservation.self,
        ])
    }
}
