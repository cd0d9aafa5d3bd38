import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import PostgresNIO
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    @Suite("Process managers and scheduled commands")
    struct ProcessManagers {
        @Test("the hold flow: acknowledge at once, release after the hold time unless confirmed")
        func holdFlow() async throws {
            try await withFreshStore { store in
                let clock = TestClock()
                try await runHoldFlow(
                    store: store, processes: PostgresProcessStore(store: store), clock: clock,
                    advance: { clock.advance(by: $0) })
            }
        }

        @Test(
            "3 scheduler processes race for the same due commands: each is dispatched by exactly one",
            .timeLimit(.minutes(5)))
        func schedulersRace() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                let processes = PostgresProcessStore(store: store)
                let app = BackstageApp(store: store, router: try .holds())
                let scheduler = CommandScheduler(app: app, store: processes, commands: .holds)
                var ids = Set<UUID>()
                for i in 0..<60 {
                    ids.insert(try await scheduler.schedule(PlaceHold(hold: "race\(i)"), at: Date()))
                }
                let startAt = Int((Date().timeIntervalSince1970 + 3) * 1000)
                let workers = try (0..<3).map { _ in
                    try WorkerProcess(arguments: ["holds", url, store.schema.rawValue, "scheduler", "\(startAt)"])
                }
                defer { for w in workers { w.kill() } }
                #expect(
                    try await eventually(timeout: .seconds(120)) { try await processes.pending(limit: 1).isEmpty })
                // Let late lines arrive, then stop the workers.
                try await Task.sleep(for: .milliseconds(300))
                for w in workers { w.kill() }
                var dispatched: [UUID] = []
                var perWorker: [Int] = []
                for w in workers {
                    let lines = await w.allLines().filter { $0.hasPrefix("dispatched ") }
                    perWorker.append(lines.count)
                    for line in lines {
                        let f = line.split(separator: " ")
                        #expect(f.count == 3 && f[2] == "dup=false", "\(line)")
                        if let id = UUID(uuidString: String(f[1])) { dispatched.append(id) }
                    }
                }
                #expect(dispatched.count == 60, "dispatches per worker: \(perWorker)")
                #expect(Set(dispatched) == ids)
                for i in 0..<60 {
                    #expect(try await store.streamVersion(Hold.streamID("race\(i)")) == 1)
                }
            }
        }

        @Test(
            "SIGKILL between storing a command's events and deleting it from the outbox: after a restart every command took effect exactly once",
            .timeLimit(.minutes(5)))
        func killBetweenStoringAndDispatching() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                let processes = PostgresProcessStore(store: store)
                let app = BackstageApp(store: store, router: try .holds())
                // The first process kills itself right after its 3rd dispatch stored its events.
                let first = try WorkerProcess(arguments: ["holds", url, store.schema.rawValue, "full", "3"])
                defer { first.kill() }
                #expect(await first.waitForLine { $0 == "started" } != nil)
                for i in 0..<10 { try await app.dispatch(PlaceHold(hold: "k\(i)")) }
                let firstLines = await first.allLines()  // ends when the process died
                let beforeKill = firstLines.filter { $0.hasPrefix("dispatched ") }.count
                #expect(beforeKill == 3)
                // Stored but not all dispatched: the outbox still holds acknowledgements.
                let left = try await processes.pending(limit: 100).filter { $0.commandName == "AcknowledgeHold" }
                #expect(!left.isEmpty)

                let second = try WorkerProcess(arguments: ["holds", url, store.schema.rawValue, "full"])
                defer { second.kill() }
                #expect(
                    try await eventually(timeout: .seconds(120)) {
                        let pending = try await processes.pending(limit: 100)
                        return pending.count == 10 && pending.allSatisfy { $0.commandName == "ReleaseHold" }
                    })
                for i in 0..<10 {
                    let events = try await store.readStream(
                        Hold.streamID("k\(i)"), from: 1, direction: .forward, limit: 10)
                    #expect(events.map(\.type) == ["HoldPlaced", "HoldAcknowledged"], "hold k\(i)")
                }
                // The command whose events were stored before the kill was dispatched again and
                // found as a duplicate, not applied twice.
                second.kill()
                let again = await second.allLines().filter { $0.hasPrefix("dispatched ") }
                #expect(again.contains { $0.hasSuffix("dup=true") })
            }
        }
    }
}
