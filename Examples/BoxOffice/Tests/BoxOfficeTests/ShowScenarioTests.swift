import Backstage
import BackstageTesting
import BoxOffice
import Testing

/// Every business rule of a show, as given/when/then scenarios.
@Suite("Show rules")
struct ShowScenarioTests {
    let scenario: Scenario

    init() throws {
        scenario = Scenario(router: try .boxOffice())
    }

    let scheduled = ShowEvent.scheduled(ShowScheduled(showID: "s1", title: "Hamlet", capacity: 2))
    let added1 = ShowEvent.ticketAdded(TicketAdded(showID: "s1", ticketID: "t1"))
    let added2 = ShowEvent.ticketAdded(TicketAdded(showID: "s1", ticketID: "t2"))
    let sold1 = ShowEvent.ticketSold(TicketSold(showID: "s1", ticketID: "t1", buyer: "ada"))
    let refunded1 = ShowEvent.ticketRefunded(TicketRefunded(showID: "s1", ticketID: "t1"))

    // MARK: Scheduling

    @Test func schedulingANewShow() throws {
        try scenario.when(ScheduleShow(showID: "s1", title: "Hamlet", capacity: 2))
            .then([scheduled])
            .thenState { show in
                #expect(show.id == "s1")
                #expect(show.capacity == 2)
                #expect(show.tickets.isEmpty)
            }
    }

    @Test func aShowIsScheduledOnce() throws {
        try scenario.given(Show.self, [scheduled])
            .when(ScheduleShow(showID: "s1", title: "Hamlet again", capacity: 5))
            .thenRejected(.alreadyScheduled("s1"))
    }

    @Test(arguments: [0, -3])
    func aShowNeedsSeats(capacity: Int) throws {
        try scenario.when(ScheduleShow(showID: "s1", title: "Empty", capacity: capacity))
            .thenRejected(.invalidCapacity(capacity))
    }

    // MARK: Adding tickets

    @Test func ticketsAreAddedUpToTheCapacity() throws {
        try scenario.given(Show.self, [scheduled, added1])
            .when(AddTicket(showID: "s1", ticketID: "t2"))
            .then([added2])
            .thenState { show in #expect(show.onSale == ["t1", "t2"]) }
        try scenario.given(Show.self, [scheduled, added1, added2])
            .when(AddTicket(showID: "s1", ticketID: "t3"))
            .thenRejected(.capacityReached(capacity: 2))
    }

    @Test func aTicketIsAddedOnce() throws {
        try scenario.given(Show.self, [scheduled, added1])
            .when(AddTicket(showID: "s1", ticketID: "t1"))
            .thenRejected(.duplicateTicket("t1"))
    }

    // MARK: Selling

    @Test func sellingSellsTheNextTicketOnSale() throws {
        try scenario.given(Show.self, [scheduled, added1, added2])
            .when(SellTicket(showID: "s1", buyer: "ada"))
            .then([sold1])
            .thenState { show in
                #expect(show.tickets["t1"] == .sold)
                #expect(show.onSale == ["t2"])
                #expect(show.ticketsSold == 1)
            }
    }

    @Test func aShowWithNoTicketOnSaleIsSoldOut() throws {
        try scenario.given(Show.self, [scheduled, added1, sold1])
            .when(SellTicket(showID: "s1", buyer: "bob"))
            .thenRejected(.soldOut("s1"))
        try scenario.given(Show.self, [scheduled])
            .when(SellTicket(showID: "s1", buyer: "bob"))
            .thenRejected(.soldOut("s1"))
    }

    @Test func aRefundedTicketIsSoldAgain() throws {
        try scenario.given(Show.self, [scheduled, added1, sold1, refunded1])
            .when(SellTicket(showID: "s1", buyer: "bob"))
            .then([.ticketSold(TicketSold(showID: "s1", ticketID: "t1", buyer: "bob"))])
    }

    // MARK: Refunding

    @Test func refundingPutsTheTicketBackOnSale() throws {
        try scenario.given(Show.self, [scheduled, added1, sold1])
            .when(RefundTicket(showID: "s1", ticketID: "t1"))
            .then([refunded1])
            .thenState { show in
                #expect(show.tickets["t1"] == .refunded)
                #expect(show.onSale == ["t1"])
            }
    }

    @Test func aTicketIsNotRefundedTwice() throws {
        try scenario.given(Show.self, [scheduled, added1, sold1, refunded1])
            .when(RefundTicket(showID: "s1", ticketID: "t1"))
            .thenRejected(.alreadyRefunded("t1"))
    }

    @Test func aTicketOnSaleCannotBeRefunded() throws {
        try scenario.given(Show.self, [scheduled, added1])
            .when(RefundTicket(showID: "s1", ticketID: "t1"))
            .thenRejected(.notSold("t1"))
    }

    @Test func anUnknownTicketCannotBeRefunded() throws {
        try scenario.given(Show.self, [scheduled, added1])
            .when(RefundTicket(showID: "s1", ticketID: "t9"))
            .thenRejected(.unknownTicket("t9"))
    }

    // MARK: Unknown shows

    @Test func commandsToAnUnknownShowAreRejected() throws {
        try scenario.when(AddTicket(showID: "nope", ticketID: "t1")).thenRejected(.unknownShow("nope"))
        try scenario.when(SellTicket(showID: "nope", buyer: "ada")).thenRejected(.unknownShow("nope"))
        try scenario.when(RefundTicket(showID: "nope", ticketID: "t1")).thenRejected(.unknownShow("nope"))
    }

    @Test func commandsGoToTheStreamOfTheirShow() throws {
        let outcome = try scenario.when(ScheduleShow(showID: "s7", title: "Macbeth", capacity: 1))
        #expect(outcome.stream == "show-s7")
    }

    @Test func rejectionsHaveStableCodesAndMessages() {
        #expect(ShowError.soldOut("s1").code == "soldOut")
        #expect(ShowError.soldOut("s1").description == "show s1 is sold out")
        #expect(ShowError.alreadyRefunded("t1").description == "ticket t1 was refunded already")
    }
}
