// The code of the "Consistency" article (Backstage.docc/Consistency.md).
import Backstage
import Testing

@Suite("Article: consistency")
struct ConsistencyArticle {
    @Test("a strongly consistent dispatch returns once the projection has the events")
    func article() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try showRouter())
        let tickets = try InMemoryProjection(name: "tickets", consuming: ShowEvent.self, initial: 0) {
            count, envelope in
            if case .ticketAdded = envelope.event { count += 1 }
        }
        let pipelines = try PipelineService(app: app, projections: [tickets])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await pipelines.run() }
            try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 5))
            try await pipelines.waitUntilProcessed()  // running and caught up (a loaded machine starts it slowly)
            let options = DispatchOptions(consistency: .strong, timeout: .seconds(10))
            try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A3"), options: options)
            #expect(tickets.state == 1)
            pipelines.stop()
            try await group.waitForAll()
        }
    }
}
