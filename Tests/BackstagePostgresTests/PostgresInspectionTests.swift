import Backstage
import BackstagePostgres
import BackstageTesting
import Testing

@Suite("Inspection (PostgreSQL)", .needsPostgres)
struct PostgresInspectionTests {
    @Test("the PostgreSQL inspector answers the inspection checks in SQL")
    func postgres() async throws {
        try await withFreshStore { store in
            #expect(!(store.inspector is LogScanningInspector))
            try await InspectionConformance.run(on: store)
        }
    }

    @Test("a lease held by a running election shows the subscription running")
    func lease() async throws {
        try await withFreshStore { store in
            let leadership = PostgresLeadership(store: store)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await leadership.run() }
                let token = try await leadership.acquire("mailer")
                let running = try await store.inspector.subscriptions()
                #expect(running.map(\.subscription) == ["mailer"])
                #expect(running.first?.activity == .running)
                #expect(running.first?.lease?.held == true && running.first?.lease?.token == token)
                await leadership.release("mailer", token: token)
                group.cancelAll()
            }
            let stopped = try await store.inspector.subscriptions()
            #expect(stopped.first?.activity == .stopped && stopped.first?.lease?.held == false)
        }
    }
}
