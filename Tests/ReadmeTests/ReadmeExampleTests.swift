// The README's example, compiled and run exactly as the README shows it (keep the two in step).
import Backstage
import BackstageMacros
import BackstageSQLite
import BackstageTesting
import Foundation
import Testing

// Events: facts, stored forever under a stable type name.
struct ShowScheduled: Event, Equatable {
    static let typeName = "ShowScheduled"
    var showID: String
    var capacity: Int
}

struct TicketAdded: Event, Equatable {
    static let typeName = "TicketAdded"
    var showID: String
    var ticketID: String
}

@EventFamily  // each event once: the macro writes the family's member list and `event`
enum ShowEvent: Equatable {
    case scheduled(ShowScheduled)
    case ticketAdded(TicketAdded)
}

// Commands: requests that may be rejected. Each names its show and decides on its state
// (`decide`'s parameter makes it a command of the show).
struct ScheduleShow: DecidingCommand {
    var showID: String
    var capacity: Int
    var aggregateID: String { showID }

    func decide(_ show: Show) -> [ShowEvent] {
        [.scheduled(ShowScheduled(showID: showID, capacity: capacity))]
    }
}

struct AddTicket: DecidingCommand {
    var showID: String
    var ticketID: String
    var aggregateID: String { showID }

    func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
        guard show.capacity > 0 else { throw .unknownShow }
        guard show.tickets.count < show.capacity else { throw .soldOut }
        return [.ticketAdded(TicketAdded(showID: showID, ticketID: ticketID))]
    }
}

enum ShowError: Error, Equatable {
    case unknownShow, soldOut
}

// The aggregate: its state, evolved by events. Deciding and evolving are both pure.
struct Show: Aggregate {
    typealias Rejection = ShowError
    static let category = "show"
    var capacity = 0
    var tickets: Set<String> = []

    mutating func apply(_ event: ShowEvent) {
        switch event {
        case .scheduled(let e): capacity = e.capacity
        case .ticketAdded(let e): tickets.insert(e.ticketID)
        }
    }
}

// The router: the commands the application accepts.
func showRouter() throws -> Router {
    try Router(ScheduleShow.self, AddTicket.self)
}

func boxOffice(path: String = "box-office.sqlite") async throws {
    let app = BackstageApp(store: try SQLiteEventStore(path: path), router: try showRouter())
    try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 2))
    let result = try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A1"))
    print(result.version, result.state.tickets)  // 2 ["A1"]

    try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A2"))
    if case .failure(let rejection) = try await app.attempt(AddTicket(showID: "hamlet", ticketID: "A3")) {
        print(rejection)  // soldOut: a ShowError, typed
    }
    let earlier = try await app.load(Show.self, id: "hamlet", atVersion: 2)
    print(earlier.state.tickets)  // ["A1"]: any page of the script
    print(try await ticketsPerShow(app))  // ["hamlet": 2]
}

// A read model: tickets per show, kept up to date from the log by a typed projection.
func ticketsPerShow(_ app: BackstageApp) async throws -> [String: Int] {
    let tickets = try InMemoryProjection(name: "tickets", consuming: ShowEvent.self, initial: [String: Int]()) {
        counts, envelope in
        if case .ticketAdded(let added) = envelope.event { counts[added.showID, default: 0] += 1 }
    }
    let pipelines = try PipelineService(app: app, projections: [tickets])
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await pipelines.run() }  // a swift-service-lifecycle Service
        try await pipelines.waitUntilProcessed()  // caught up with the log
        pipelines.stop()
    }
    return tickets.state
}

// MARK: - The README's scenario test

@Test func aFullShowRejectsAnotherTicket() throws {
    try Scenario(router: showRouter())
        .given(
            Show.self,
            [
                .scheduled(ShowScheduled(showID: "hamlet", capacity: 1)),
                .ticketAdded(TicketAdded(showID: "hamlet", ticketID: "A1")),
            ]
        )
        .when(AddTicket(showID: "hamlet", ticketID: "A2"))
        .thenRejected(.soldOut)
}

@Test("the README example runs on a real SQLite file")
func readmeExample() async throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("readme-\(UUID())")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let path = directory.appendingPathComponent("box-office.sqlite").path
    try await boxOffice(path: path)
    let store = try SQLiteEventStore(path: path)
    let events = try await store.readStream("show-hamlet", from: 1, direction: .forward, limit: 10)
    #expect(events.map(\.type) == ["ShowScheduled", "TicketAdded", "TicketAdded"])
    #expect(try await ticketsPerShow(BackstageApp(store: store, router: try showRouter())) == ["hamlet": 2])
}
