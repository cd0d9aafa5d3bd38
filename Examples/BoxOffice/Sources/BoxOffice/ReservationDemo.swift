import Backstage
import Foundation

/// The reservation part of the demo: one reservation is paid in time, another is not and is
/// released by its scheduled command, its seats back on sale; prints the figures and both
/// causation chains (command -> event -> command).
public struct ReservationDemo: Sendable {
    /// How long seats are held (short, so the demo sees a release).
    public var holdTime: Duration = .milliseconds(400)

    /// The defaults.
    public init() {}

    /// Runs it on `app` and returns the text to print.
    public func run(on app: BackstageApp) async throws -> String {
        let desk = try ReservationDesk(app: app, holdTime: holdTime)
        let run = UUID().uuidString.prefix(8).lowercased()
        let showID = "res-\(run)"
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await desk.run() }
            defer { group.cancelAll() }
            try await app.dispatch(ScheduleShow(showID: showID, title: "The Tempest", capacity: 6))
            for i in 1...6 { try await app.dispatch(AddTicket(showID: showID, ticketID: "\(showID)-t\(i)")) }
            let paid = "\(run)-paid"
            let unpaid = "\(run)-unpaid"
            let started = ContinuousClock.now
            try await app.dispatch(ReserveSeats(reservationID: paid, showID: showID, customer: "ada", seats: 2))
            try await app.dispatch(ReserveSeats(reservationID: unpaid, showID: showID, customer: "bob", seats: 3))
            try await waitFor { try await app.load(Show.self, id: showID).state.onSale.count == 1 }
            let heldOnSale = try await app.load(Show.self, id: showID).state.onSale.count
            try await app.dispatch(PayReservation(reservationID: paid))
            try await waitFor { try await app.load(Reservation.self, id: unpaid).state.status == .released }
            try await waitFor { try await app.load(Show.self, id: showID).state.onSale.count == 4 }
            let elapsed = ContinuousClock.now - started
            let show = try await app.load(Show.self, id: showID).state
            let instances = try await desk.process.instances().count
            let pending = try await desk.scheduler.pending().count

            let showEvents = try await app.store.readStream(
                Show.streamID(showID), from: 1, direction: .forward, limit: 100)
            let released = showEvents.last { $0.type == TicketRefunded.typeName }
            let heldForPaid = showEvents.last {
                $0.type == TicketSold.typeName
                    && String(decoding: $0.data, as: UTF8.self).contains(reservationBuyer(paid))
            }
            let millis = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
            var lines = [
                "Reservations (hold time \(holdTime), show \(showID), 6 seats):",
                "  reserved: 2 seats for ada (\(paid)), 3 seats for bob (\(unpaid)); seats on sale while held: \(heldOnSale)",
                "  ada paid in time: release cancelled; bob did not: released after the hold time",
                "  seats on sale now: \(show.onSale.count) (bob's 3 back), sold: \(show.ticketsSold) (ada's 2)",
                "  process instances running: \(instances), commands pending: \(pending); \(String(format: "%.0f", millis)) ms from reserving to released",
            ]
            if let released {
                lines.append("  released reservation's chain (a refund that put a seat back on sale):")
                lines.append(describeChain(try await causationChain(of: released, in: app.store)))
            }
            if let heldForPaid {
                lines.append("  paid reservation's chain (a seat held for it):")
                lines.append(describeChain(try await causationChain(of: heldForPaid, in: app.store)))
            }
            return lines.joined(separator: "\n")
        }
    }

    private func waitFor(_ condition: @Sendable () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw CancellationError() }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
