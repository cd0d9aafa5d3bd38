// The code of the "Aggregates and commands" article (Backstage.docc/AggregatesAndCommands.md),
// compiled and run against the README's domain.
import Backstage
import Foundation
import Testing

@Suite("Article: aggregates and commands")
struct AggregatesArticle {
    @Test("dispatch, rejections, idempotency keys and time travel work as the article shows")
    func article() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try showRouter())
        try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 2))
        try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A1"))

        let key = UUID()
        let first = try await app.dispatch(
            AddTicket(showID: "hamlet", ticketID: "A7"), options: DispatchOptions(commandID: key))
        let again = try await app.dispatch(
            AddTicket(showID: "hamlet", ticketID: "A7"), options: DispatchOptions(commandID: key))
        print(first.version == again.version, again.isDuplicate)  // true true
        #expect(first.version == again.version && again.isDuplicate)

        var rejection: ShowError?
        do {
            try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A9"))
        } catch let error as ShowError {
            print("rejected:", error)
            rejection = error
        }
        #expect(rejection == .soldOut)

        let now = try await app.load(Show.self, id: "hamlet")
        let before = try await app.load(Show.self, id: "hamlet", atVersion: 1)
        let history = try await app.history(Show.self, id: "hamlet")
        print(now.version, before.state.tickets.count, history.map(\.recorded.type))
        #expect(now.version == 3 && before.state.tickets.isEmpty && history.count == 3)
    }
}
