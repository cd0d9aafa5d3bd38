// The code of the domain-writing article (Backstage.docc/LessBoilerplate.md): its own small show
// domain (with sales), in a namespace so that it does not clash with the README's.
import Backstage
import BackstageMacros
import Testing

enum LessBoilerplateArticle {
    struct ShowScheduled: Event {
        static let typeName = "ShowScheduled"
        var showID: String
    }

    struct TicketAdded: Event {
        static let typeName = "TicketAdded"
        var showID: String
        var ticketID: String
    }

    struct TicketSold: Event {
        static let typeName = "TicketSold"
        var showID: String
        var ticketID: String
        var buyer: String
    }

    @EventFamily
    enum ShowEvent {
        case scheduled(ShowScheduled)
        case ticketAdded(TicketAdded)
        case ticketSold(TicketSold)
    }

    /// The same family without the macro, as the article's "Without the macro" shows it.
    enum WithoutMacro {
        enum ShowEvent: EventFamily {
            case scheduled(ShowScheduled)
            case ticketAdded(TicketAdded)
            case ticketSold(TicketSold)

            static let members: [EventMember<ShowEvent>] = [.init(scheduled), .init(ticketAdded), .init(ticketSold)]

            var event: any Event {
                switch self {
                case .scheduled(let e): e
                case .ticketAdded(let e): e
                case .ticketSold(let e): e
                }
            }
        }
    }

    enum ShowError: Error, Equatable {
        case unknownShow(String)
        case soldOut(String)
    }

    struct Show: Aggregate {
        typealias Rejection = ShowError
        static let category = "show"
        var id: String?
        var onSale: [String] = []

        mutating func apply(_ event: ShowEvent) {
            switch event {
            case .scheduled(let e): id = e.showID
            case .ticketAdded(let e): onSale.append(e.ticketID)
            case .ticketSold(let e): onSale.removeAll { $0 == e.ticketID }
            }
        }

        /// A refund puts the ticket on sale again.
        func refund(_ command: RefundTicket) throws(ShowError) -> [ShowEvent] {
            guard id != nil else { throw .unknownShow(command.showID) }
            return [.ticketAdded(TicketAdded(showID: command.showID, ticketID: command.ticketID))]
        }
    }

    struct ScheduleShow: DecidingCommand {
        var showID: String
        var aggregateID: String { showID }
        func decide(_ show: Show) -> [ShowEvent] { [.scheduled(ShowScheduled(showID: showID))] }
    }

    struct AddTicket: DecidingCommand {
        var showID: String
        var ticketID: String
        var aggregateID: String { showID }
        func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
            guard show.id != nil else { throw .unknownShow(showID) }
            return [.ticketAdded(TicketAdded(showID: showID, ticketID: ticketID))]
        }
    }

    struct SellTicket: DecidingCommand {
        var showID: String
        var buyer: String

        var aggregateID: String { showID }  // the stream is "show-<showID>"

        func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
            guard show.id != nil else { throw .unknownShow(showID) }
            guard let ticket = show.onSale.first else { throw .soldOut(showID) }
            return [.ticketSold(TicketSold(showID: showID, ticketID: ticket, buyer: buyer))]
        }
    }

    struct RefundTicket: DecidingCommand {
        var showID: String
        var ticketID: String
        var aggregateID: String { showID }
        func decide(_ show: Show) throws(ShowError) -> [ShowEvent] { try show.refund(self) }
    }

    static func deciding() throws -> Router {
        let router = try Router(ScheduleShow.self, AddTicket.self, SellTicket.self, RefundTicket.self)
        // or, on an existing router: try router.route(SellTicket.self, RefundTicket.self)
        return router
    }

    static func withClosure() throws -> Router {
        var router = try Router(ScheduleShow.self, AddTicket.self, SellTicket.self)
        try router.route(RefundTicket.self, id: \.showID) { show, command in try show.refund(command) }
        return router
    }

    /// Sells one ticket and reports the outcome as the article shows.
    static func sell(_ app: BackstageApp) async throws -> String {
        var said = ""
        func print(_ text: String) { said = text }
        switch try await app.attempt(SellTicket(showID: "s1", buyer: "ada")) {
        case .success(let sold): print("sold at version \(sold.version)")
        case .failure(.soldOut): print("sold out")
        case .failure(let rejection): print("rejected: \(rejection)")
        }
        return said
    }
}

@Test("the domain article's family, with and without the macro, reads and writes the same events")
func lessBoilerplateFamilies() throws {
    typealias A = LessBoilerplateArticle
    let withMacro = try EventCodec<A.ShowEvent>()
    let byHand = try EventCodec<A.WithoutMacro.ShowEvent>()
    #expect(withMacro.typeNames == ["ShowScheduled", "TicketAdded", "TicketSold"])
    #expect(withMacro.typeNames == byHand.typeNames)
    let sold = A.TicketSold(showID: "s1", ticketID: "t1", buyer: "ada")
    let data = try withMacro.encode(.ticketSold(sold), metadata: EventMetadata())
    #expect(data.type == "TicketSold")
    #expect(data.data == (try byHand.encode(.ticketSold(sold), metadata: EventMetadata())).data)
}

@Test("the domain article's deciding commands sell, reject typed, and refund through a closure route")
func lessBoilerplateArticle() async throws {
    typealias A = LessBoilerplateArticle
    for router in [try A.deciding(), try A.withClosure()] {
        let app = BackstageApp(store: InMemoryEventStore(), router: router)
        #expect(try await A.sell(app) == "rejected: unknownShow(\"s1\")")
        try await app.dispatch(A.ScheduleShow(showID: "s1"))
        try await app.dispatch(A.AddTicket(showID: "s1", ticketID: "t1"))
        #expect(try await A.sell(app) == "sold at version 3")
        #expect(try await A.sell(app) == "sold out")
        try await app.dispatch(A.RefundTicket(showID: "s1", ticketID: "t1"))
        #expect(try await A.sell(app) == "sold at version 5")
    }
}

// The process-managers article schedules these commands: the scheduler stores them as JSON.
extension LessBoilerplateArticle.SellTicket: Codable {}
extension LessBoilerplateArticle.RefundTicket: Codable {}
