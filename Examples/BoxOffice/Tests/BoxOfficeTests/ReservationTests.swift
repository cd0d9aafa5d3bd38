import Backstage
import BackstageTesting
import BoxOffice
import Foundation
import Testing

@Suite struct ReservationTests {
    @Test func reservingStartsAProcessThatHoldsSeatsAndSchedulesTheRelease() throws {
        let reserved = ReservationFlowEvent.reserved(
            SeatsReserved(reservationID: "r1", showID: "s1", customer: "ada", seats: 2))
        try ProcessScenario(ReservationProcess(holdTime: .seconds(900)))
            .when(reserved)
            .thenDispatched([
                SellTicket(showID: "s1", buyer: "reservation:r1"), SellTicket(showID: "s1", buyer: "reservation:r1"),
            ])
            .thenScheduled([(ReleaseReservation(reservationID: "r1"), after: .seconds(900), key: "release-r1")])
        try ProcessScenario(ReservationProcess())
            .given([reserved])
            .when(.paid(ReservationPaid(reservationID: "r1")))
            .then([.cancel(key: "release-r1")])
            .thenStopped("r1")
        try ProcessScenario(ReservationProcess())
            .given([
                reserved, .ticketSold(TicketSold(showID: "s1", ticketID: "t1", buyer: "reservation:r1")),
                .ticketSold(TicketSold(showID: "s1", ticketID: "t2", buyer: "ada")),
            ])
            .when(.released(ReservationReleased(reservationID: "r1")))
            .thenDispatched([RefundTicket(showID: "s1", ticketID: "t1")])
            .thenStopped("r1")
    }

    @Test func paidReservationKeepsItsSeatsUnpaidOneGoesBackOnSale() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try .boxOffice())
        let clock = TestClock()
        let desk = try ReservationDesk(app: app, holdTime: .seconds(15 * 60), clock: clock)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await desk.run() }
            defer { group.cancelAll() }
            try await app.dispatch(ScheduleShow(showID: "s1", title: "Hamlet", capacity: 4))
            for i in 1...4 { try await app.dispatch(AddTicket(showID: "s1", ticketID: "t\(i)")) }
            try await app.dispatch(ReserveSeats(reservationID: "paid", showID: "s1", customer: "ada", seats: 2))
            try await app.dispatch(ReserveSeats(reservationID: "unpaid", showID: "s1", customer: "bob", seats: 1))
            try await waitUntil { try await app.load(Show.self, id: "s1").state.onSale.count == 1 }
            try await app.dispatch(PayReservation(reservationID: "paid"))
            try await waitUntil { try await desk.scheduler.pending().count == 1 }
            // 14 minutes: nothing released yet.
            clock.advance(by: .seconds(14 * 60))
            desk.scheduler.poke()
            try await Task.sleep(for: .milliseconds(100))
            #expect(try await app.load(Reservation.self, id: "unpaid").state.status == .held)
            clock.advance(by: .seconds(2 * 60))
            desk.scheduler.poke()
            try await waitUntil { try await app.load(Show.self, id: "s1").state.onSale.count == 2 }
            #expect(try await app.load(Reservation.self, id: "unpaid").state.status == .released)
            #expect(try await app.load(Reservation.self, id: "paid").state.status == .paid)
            await #expect(throws: ReservationError.alreadyReleased("unpaid")) {
                try await app.dispatch(PayReservation(reservationID: "unpaid"))
            }
            try await waitUntil { try await desk.process.instances().isEmpty }
            #expect(try await desk.scheduler.pending().isEmpty)
        }
    }
}

/// Waits (at most 60 s, then records an issue) until `condition` holds.
func waitUntil(_ condition: @Sendable () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(60)
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("timed out")
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}
