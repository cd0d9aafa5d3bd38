// The code of the "Testing" article (Backstage.docc/Testing.md).
import Backstage
import BackstageTesting
import Testing

@Suite("Article: testing")
struct TestingArticle {
    @Test func ticketsAreCounted() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try showRouter())
        try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 5))
        try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A1"))
        #expect(try await ticketsPerShow(app) == ["hamlet": 1])
    }

    @Test(arguments: StoreConformance.checks)
    func conformance(_ check: ConformanceCheck) async throws {
        try await check.run { InMemoryEventStore() }
    }
}
