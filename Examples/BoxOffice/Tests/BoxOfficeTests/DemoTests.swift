import Backstage
import BoxOffice
import Foundation
import Testing

/// The demo on a temporary SQLite file.
@Suite("Demo")
struct DemoTests {
    @Test func aSecondRunContinuesFromTheStoredHistory() async throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("box-office-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let location = DatabaseLocation.sqlite(path: directory.appendingPathComponent("demo.sqlite").path)
        var demo = Demo()
        demo.commands = 1_000
        demo.tasks = 16

        let first = try await run(demo, on: location)
        #expect(first.commands == 1_000)
        #expect(first.accepted + first.rejections.values.reduce(0, +) == 1_000)
        #expect(first.shows == 10)
        #expect(first.eventsBefore == 0)
        #expect(first.eventsAfter == Int64(first.accepted), "every accepted command stores one event")
        #expect(first.rejections["alreadyRefunded"] == 10, "each show tries one double refund")
        let sample = try #require(first.sampleRejection)
        #expect(sample.error == .alreadyRefunded(sample.error.ticketIDForTest))
        #expect(sample.command.hasPrefix("RefundTicket("))
        // show-1: scheduled, 40 tickets added, then sales and refunds.
        #expect(first.current.state.tickets.count == 40)
        #expect(first.earlier.version == first.current.version / 4)
        #expect(first.earlier.state.tickets.count == Int(first.earlier.version) - 1)
        // The ticket with the longest story: added, then sold and refunded in turn.
        #expect(first.ticketHistory.count >= 3)
        #expect(first.ticketHistory.allSatisfy { $0.event.ticketID == first.ticketID })
        let story = first.ticketHistory.map(\.recorded.type)
        #expect(story.first == "TicketAdded")
        #expect(
            story.dropFirst().enumerated().allSatisfy { i, type in
                type == (i % 2 == 0 ? "TicketSold" : "TicketRefunded")
            })
        #expect(first.text.contains("commands/s"))
        #expect(first.text.contains("The full history of ticket \(first.ticketID):"))

        let second = try await run(demo, on: location)
        #expect(second.eventsBefore == first.eventsAfter)
        #expect(second.eventsAfter > first.eventsAfter)
        #expect(second.eventsAfter == first.eventsAfter + Int64(second.accepted))
        #expect(second.current.version > first.current.version, "show-1 continues where it was")
        #expect(second.ticketHistory.count >= first.ticketHistory.count, "ticket stories only grow")
        #expect(second.rejections["soldOut"] == 10, "each show sells out once on the second run")
        #expect(second.rejections["alreadyRefunded"] == 10)

        let fresh = try BoxOfficeDatabase.open(location, fresh: true)
        #expect(try await fresh.store.headPosition() == .start)
        try await fresh.close()
    }

    private func run(_ demo: Demo, on location: DatabaseLocation) async throws -> DemoReport {
        let database = try BoxOfficeDatabase.open(location)
        let app = BackstageApp(store: database.store, router: try .boxOffice())
        let report = try await demo.run(on: app)
        try await database.close()
        return report
    }

    @Test func databaseLocations() throws {
        #expect(try DatabaseLocation(parsing: "box-office.sqlite") == .sqlite(path: "box-office.sqlite"))
        #expect(try DatabaseLocation(parsing: "sqlite:/tmp/x.db") == .sqlite(path: "/tmp/x.db"))
        #expect(try DatabaseLocation(parsing: "memory") == .memory)
        #expect(throws: DatabaseError.unsupported("mysql://localhost/db")) {
            try DatabaseLocation(parsing: "mysql://localhost/db")
        }
        #expect(throws: DatabaseError.unsupported("sqlite:")) { try DatabaseLocation(parsing: "sqlite:") }
    }
}

extension ShowError {
    /// The ticket of a ticket rejection.
    var ticketIDForTest: String {
        switch self {
        case .alreadyRefunded(let t), .notSold(let t), .unknownTicket(let t), .duplicateTicket(let t): t
        default: ""
        }
    }
}
