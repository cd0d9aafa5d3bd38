// The code of the process-managers article (Backstage.docc/ProcessManagers.md): the box office's
// reservation process over the domain article's show (sales and refunds), in a namespace.
import Backstage
import BackstageSQLite
import BackstageTesting
import Foundation
import Logging
import ServiceLifecycle
import Testing

enum ProcessManagersArticle {
    typealias Show = LessBoilerplateArticle.Show
    typealias TicketSold = LessBoilerplateArticle.TicketSold
    typealias SellTicket = LessBoilerplateArticle.SellTicket
    typealias RefundTicket = LessBoilerplateArticle.RefundTicket

    struct SeatsReserved: Event, Hashable {
        static let typeName = "SeatsReserved"
        var reservationID: String
        var showID: String
        var customer: String
        var seats: Int
    }

    struct ReservationPaid: Event, Hashable {
        static let typeName = "ReservationPaid"
        var reservationID: String
    }

    struct ReservationReleased: Event, Hashable {
        static let typeName = "ReservationReleased"
        var reservationID: String
    }

    enum ReservationEvent: EventFamily {
        case reserved(SeatsReserved)
        case paid(ReservationPaid)
        case released(ReservationReleased)
        static let members: [EventMember<ReservationEvent>] = [.init(reserved), .init(paid), .init(released)]
    }

    enum ReservationError: Error, Equatable, RejectionMarker {
        case unknownReservation(String)
        case alreadyPaid(String)
    }

    struct Reservation: Aggregate {
        typealias Rejection = ReservationError
        static let category = "reservation"
        var held = false
        var paid = false
        mutating func apply(_ event: ReservationEvent) {
            switch event {
            case .reserved: held = true
            case .paid: paid = true
            case .released: held = false
            }
        }
    }

    struct ReleaseReservation: DecidingCommand, Codable {
        typealias Target = Reservation
        var reservationID: String
        var aggregateID: String { reservationID }
        func decide(_ reservation: Reservation) throws(ReservationError) -> [ReservationEvent] {
            guard reservation.held else { throw .unknownReservation(reservationID) }
            guard !reservation.paid else { throw .alreadyPaid(reservationID) }
            return [.released(ReservationReleased(reservationID: reservationID))]
        }
    }

    /// What the reservation process reads: the reservation's events and the show's sales.
    enum ReservationFlowEvent: EventFamily {
        case reserved(SeatsReserved)
        case paid(ReservationPaid)
        case released(ReservationReleased)
        case ticketSold(TicketSold)
        static let members: [EventMember<ReservationFlowEvent>] = [
            .init(reserved), .init(paid), .init(released), .init(ticketSold),
        ]
    }

    struct ReservationProcessState: Codable, Sendable {
        var showID = ""
        var tickets: [String] = []
    }

    public struct ReservationProcess: ProcessManager {
        public let name = "reservations"
        public var holdTime: Duration
        public let initialState = ReservationProcessState()

        public func route(_ envelope: Envelope<ReservationFlowEvent>) -> ProcessRouting {
            switch envelope.event {
            case .reserved(let e): .start(e.reservationID)
            case .paid(let e): .stop(e.reservationID)
            case .released(let e): .stop(e.reservationID)
            case .ticketSold(let e):
                e.buyer.hasPrefix("reservation:") ? .continue(String(e.buyer.dropFirst(12))) : .ignore
            }
        }

        public func handle(_ envelope: Envelope<ReservationFlowEvent>, state: ReservationProcessState) throws
            -> [ProcessAction]
        {
            switch envelope.event {
            case .reserved(let e):
                (0..<e.seats).map { _ in
                    .dispatch(SellTicket(showID: e.showID, buyer: "reservation:\(e.reservationID)"))
                }
                    + [
                        .schedule(
                            ReleaseReservation(reservationID: e.reservationID), after: holdTime,
                            key: "release-\(e.reservationID)")
                    ]
            case .paid(let e): [.cancel(key: "release-\(e.reservationID)")]
            case .released: state.tickets.map { .dispatch(RefundTicket(showID: state.showID, ticketID: $0)) }
            case .ticketSold: []
            }
        }

        public func apply(_ envelope: Envelope<ReservationFlowEvent>, to state: inout ReservationProcessState) {
            switch envelope.event {
            case .reserved(let e): state.showID = e.showID
            case .ticketSold(let e): state.tickets.append(e.ticketID)
            case .paid, .released: break
            }
        }
    }

    /// Running one: the process manager, its pipelines and the scheduler in a service group.
    static func running(app: BackstageApp, sqliteStore: SQLiteEventStore, logger: Logger) throws -> ServiceGroup {
        let processes = try SQLiteProcessStore(store: sqliteStore)  // or PostgresProcessStore(store:), InMemoryProcessStore()
        let reservations = try ProcessManagerProjection(ReservationProcess(holdTime: .seconds(900)), store: processes)
        let pipelines = try PipelineService(app: app, projections: [reservations])
        let scheduler = CommandScheduler(
            app: app, store: processes, commands: .of([SellTicket.self, RefundTicket.self, ReleaseReservation.self]),
            processManagers: [reservations])
        let group = ServiceGroup(services: [pipelines, scheduler], gracefulShutdownSignals: [.sigterm], logger: logger)
        return group
    }

    /// The box office's reservation desk, reduced: the process manager and the scheduler of one app.
    final class ReservationDesk: Sendable {
        let process: ProcessManagerProjection<ReservationProcess>
        let scheduler: CommandScheduler
        let pipelines: PipelineService

        init(app: BackstageApp, holdTime: Duration, clock: any SchedulerClock) throws {
            let processes = InMemoryProcessStore()
            process = try ProcessManagerProjection(ReservationProcess(holdTime: holdTime), store: processes)
            scheduler = CommandScheduler(
                app: app, store: processes,
                commands: .of([SellTicket.self, RefundTicket.self, ReleaseReservation.self]),
                processManagers: [process], clock: clock)
            pipelines = try PipelineService(app: app, projections: [process])
        }
    }

    /// A test's hold time runs out at once: the clock is advanced, not waited for.
    static func holdRunsOut(app: BackstageApp) throws -> ReservationDesk {
        let clock = TestClock()
        let desk = try ReservationDesk(app: app, holdTime: .seconds(15 * 60), clock: clock)
        clock.advance(by: .seconds(16 * 60))
        desk.scheduler.poke()  // look for due commands now
        return desk
    }
}

@Test("the process-managers article's scenario: paying cancels the release and stops the process")
func processManagersArticleScenario() throws {
    typealias A = ProcessManagersArticle
    typealias ReservationProcess = A.ReservationProcess
    typealias SeatsReserved = A.SeatsReserved
    typealias ReservationPaid = A.ReservationPaid
    try ProcessScenario(ReservationProcess(holdTime: .seconds(900)))
        .given([.reserved(SeatsReserved(reservationID: "r1", showID: "s1", customer: "ada", seats: 2))])
        .when(.paid(ReservationPaid(reservationID: "r1")))
        .thenCancelled(["release-r1"])
        .thenStopped("r1")
}
