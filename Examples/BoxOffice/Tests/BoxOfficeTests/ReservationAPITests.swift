import Backstage
import BackstageTesting
import BoxOffice
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

/// Reserve and pay over HTTP, with the reservation process running on a test clock.
@Suite("HTTP API: reservations")
struct ReservationAPITests {
    @Test func reservePayAndAnExpiredReservationCannotBePaid() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try .boxOffice())
        let clock = TestClock()
        let desk = try ReservationDesk(app: app, holdTime: .seconds(600), clock: clock)
        var logger = Logger(label: "box-office-test")
        logger.logLevel = .warning
        let server = BoxOfficeAPI.application(app: app, port: 0, logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await desk.run() }
            defer { group.cancelAll() }
            try await server.test(.live) { client in
                _ = try await client.send(.post, "/shows", ["id": "s1", "title": "Hamlet", "capacity": 3])
                for t in ["t1", "t2", "t3"] { _ = try await client.send(.post, "/shows/s1/tickets", ["ticketID": t]) }
                var reply = try await client.send(
                    .post, "/shows/s1/reservations", ["id": "r1", "customer": "ada", "seats": 2])
                #expect(reply.status == .created)
                #expect(reply.json["status"] as? String == "held")
                reply = try await client.send(
                    .post, "/shows/s1/reservations", ["id": "r2", "customer": "bob", "seats": 1])
                #expect(reply.status == .created)
                reply = try await client.send(.post, "/reservations/r1/pay")
                #expect(reply.status == .ok)
                #expect(reply.json["status"] as? String == "paid")
                try await waitUntil { try await app.load(Show.self, id: "s1").state.onSale.isEmpty }
                // The process has stored r2's release (its projection caught up) before time moves on.
                try await desk.pipelines.waitUntilProcessed()
                // Due 600 s after r2's event was recorded (wall time, which a loaded machine moves
                // on while the test runs): 601 s from now is past it whenever it was recorded.
                clock.advance(to: Date().addingTimeInterval(601))
                desk.scheduler.poke()
                try await waitUntil { try await app.load(Reservation.self, id: "r2").state.status == .released }
                reply = try await client.send(.post, "/reservations/r2/pay")
                #expect(reply.status == .conflict)
                #expect(reply.json["error"] as? String == "alreadyReleased")
                reply = try await client.send(.get, "/reservations/r9")
                #expect(reply.status == .notFound)
                try await waitUntil { try await app.load(Show.self, id: "s1").state.onSale.count == 1 }
            }
        }
    }
}
