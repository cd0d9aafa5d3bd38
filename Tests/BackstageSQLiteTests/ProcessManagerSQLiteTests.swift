import Backstage
import BackstageSQLite
import BackstageTestSupport
import BackstageTesting
import Foundation
import GRDB
import Testing

@Suite struct ProcessManagerSQLiteTests {
    @Test func holdFlowOnSQLite() async throws {
        let db = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: db.path)
        let clock = TestClock()
        try await runHoldFlow(
            store: store, processes: try SQLiteProcessStore(store: store), clock: clock,
            advance: { clock.advance(by: $0) })
    }

    @Test func instancesAndScheduledCommandsSurviveARestart() async throws {
        let db = try TemporaryDatabase()
        let clock = TestClock()
        do {
            let store = try SQLiteEventStore(path: db.path)
            let app = BackstageApp(store: store, router: try .holds())
            let processes = try SQLiteProcessStore(store: store)
            let manager = try ProcessManagerProjection(HoldProcess(holdTime: .seconds(600)), store: processes)
            let pipelines = try PipelineService(app: app, projections: [manager])
            try await app.dispatch(PlaceHold(hold: "r"))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await pipelines.run() }
                try await eventually("the process stored its commands") {
                    try await processes.pending(limit: 10).count == 2
                }
                group.cancelAll()
            }
            #expect(try await manager.instance("r")?.events == 1)
        }
        // Every process was down while the release came due: it fires when one starts.
        clock.advance(by: .seconds(3600))
        let store = try SQLiteEventStore(path: db.path)
        let app = BackstageApp(store: store, router: try .holds())
        let processes = try SQLiteProcessStore(store: store)
        let manager = try ProcessManagerProjection(HoldProcess(holdTime: .seconds(600)), store: processes)
        let scheduler = CommandScheduler(
            app: app, store: processes, commands: .holds, processManagers: [manager], clock: clock)
        #expect(try await scheduler.dispatchDue() == 2)
        let hold = try await app.load(Hold.self, id: "r").state
        #expect(hold.acknowledged == 1 && hold.closed)
        // Dispatching the same stored command again is harmless: it was stored with its id.
        let again = try await processes.pending(limit: 10)
        #expect(again.isEmpty)
        let events = try await store.readStream(Hold.streamID("r"), from: 1, direction: .forward, limit: 10)
        #expect(events.map(\.type) == ["HoldPlaced", "HoldAcknowledged", "HoldReleased"])
    }
}
