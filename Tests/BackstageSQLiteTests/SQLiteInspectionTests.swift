import Backstage
import BackstageSQLite
import BackstageTesting
import Foundation
import Testing

@Suite("Inspection (SQLite)")
struct SQLiteInspectionTests {
    @Test("the SQLite inspector answers the inspection checks in SQL")
    func sqlite() async throws {
        let directory = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: directory.path)
        #expect(!(store.inspector is LogScanningInspector))
        try await InspectionConformance.run(on: store)
    }

    @Test("a held lease shows the subscription running, with its owner")
    func lease() async throws {
        let directory = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: directory.path)
        let token = try await store.pipelineDefaults.leadership.acquire("mailer")
        let running = try await store.inspector.subscriptions()
        #expect(running.map(\.subscription) == ["mailer"])
        #expect(running.first?.activity == .running)
        #expect(running.first?.lease?.held == true && running.first?.lease?.token == token)
        #expect(running.first?.checkpoint == nil)
        await store.pipelineDefaults.leadership.release("mailer", token: token)
        let stopped = try await store.inspector.subscriptions()
        #expect(stopped.first?.activity == .stopped && stopped.first?.lease?.held == false)
    }
}
