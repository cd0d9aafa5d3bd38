import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import Testing

@Suite struct ProcessManagerTests {
    @Test func holdFlowOnTheInMemoryStore() async throws {
        let clock = TestClock()
        try await runHoldFlow(
            store: InMemoryEventStore(), processes: InMemoryProcessStore(), clock: clock,
            advance: { clock.advance(by: $0) })
    }

    @Test func commandIDsAreDeterministicNameBasedUUIDs() throws {
        let event = UUID(uuidString: "0190a7c4-1a2b-7c3d-8e4f-5a6b7c8d9e0f")!
        let a = deterministicCommandID(process: "holds", eventID: event, index: 0)
        #expect(a == deterministicCommandID(process: "holds", eventID: event, index: 0))
        #expect(a != deterministicCommandID(process: "holds", eventID: event, index: 1))
        #expect(a != deterministicCommandID(process: "other", eventID: event, index: 0))
        // Version 5, RFC 4122 variant; the value is fixed forever (stored ids depend on it).
        #expect(a.uuidString.dropFirst(14).first == "5")
        #expect("89AB".contains(a.uuidString.dropFirst(19).first!))
    }

    @Test func sha1MatchesTheStandardTestVector() {
        // The UUIDv5 of the DNS namespace and "python.org" (RFC 4122 style, as computed by Python's uuid5).
        #expect(testUUIDv5DNS("python.org") == "886313E1-3B8A-5372-9B90-0C9AEE199E5D")
    }

    @Test func scenarioChecksDispatchedScheduledAndCancelledCommands() throws {
        let placed = HoldEvent.placed(HoldPlaced(hold: "r1"))
        try ProcessScenario(HoldProcess(holdTime: .seconds(900)))
            .when(placed)
            .thenDispatched([AcknowledgeHold(hold: "r1")])
            .thenScheduled([(ReleaseHold(hold: "r1"), after: .seconds(900), key: "release-r1")])
            .thenState("r1") { #expect($0.events == 1) }
        try ProcessScenario(HoldProcess())
            .given([placed])
            .when(.confirmed(HoldConfirmed(hold: "r1")))
            .then([.cancel(key: "release-r1")])
            .thenStopped("r1")
        // An event for an instance that does not run is ignored.
        try ProcessScenario(HoldProcess())
            .when(.confirmed(HoldConfirmed(hold: "r9")))
            .then([])
    }

    @Test func scenarioFailuresAreReadable() throws {
        let failure = #expect(throws: ScenarioFailure.self) {
            try ProcessScenario(HoldProcess(holdTime: .seconds(900)))
                .given([])
                .when(.placed(HoldPlaced(hold: "r1")))
                .thenScheduled([(ReleaseHold(hold: "r1"), after: .seconds(60), key: "release-r1")])
        }
        let message = failure?.message ?? ""
        #expect(message.contains("the scheduled commands differ from item 1 on"))
        #expect(
            message.contains(
                "> 1. schedule ReleaseHold {\"hold\":\"r1\"} 60.0 seconds after the event key 'release-r1'"))
        #expect(
            message.contains(
                "> 1. schedule ReleaseHold {\"hold\":\"r1\"} 900.0 seconds after the event key 'release-r1'"))
        #expect(message.contains("routed to instance 'r1'"))
    }

    @Test func aRedeliveredBatchNeverAppliesTwice() async throws {
        // The same events applied with a stale checkpoint expectation fail the compare-and-set and
        // write nothing: no second instance update, no duplicate command.
        let store = InMemoryEventStore()
        let app = BackstageApp(store: store, router: try .holds())
        try await app.dispatch(PlaceHold(hold: "x"))
        let events = try await store.readAll(after: .start, limit: 10, filter: .all)
        let processes = InMemoryProcessStore()
        let manager = try ProcessManagerProjection(HoldProcess(), store: processes)
        let commit = ProjectionCommit.checkpoint(
            subscription: "holds@v1", expected: nil, new: events[0].logPosition, token: 0)
        try await manager.apply(events, version: 1, commit: commit)
        await #expect(throws: CheckpointError.self) { try await manager.apply(events, version: 1, commit: commit) }
        let pending = try await processes.pending(limit: 10)
        #expect(pending.count == 2)
        #expect(Set(pending.map(\.id)).count == 2)
        #expect(pending.allSatisfy { $0.causationID == events[0].id })
        #expect(try await manager.instance("x")?.events == 1)
    }

    @Test func aCommandDueWhileNobodyRanFiresOnStart() async throws {
        let store = InMemoryEventStore()
        let app = BackstageApp(store: store, router: try .holds())
        try await app.dispatch(PlaceHold(hold: "late"))
        let processes = InMemoryProcessStore()
        let clock = TestClock()
        let scheduler = CommandScheduler(app: app, store: processes, commands: .holds, clock: clock)
        try await scheduler.schedule(ReleaseHold(hold: "late"), at: clock.now().addingTimeInterval(-60), key: "k")
        try await scheduler.schedule(ReleaseHold(hold: "never"), at: clock.now().addingTimeInterval(60), key: "k2")
        #expect(try await scheduler.cancel(key: "k2") == 1)
        #expect(try await scheduler.dispatchDue() == 1)
        #expect(try await app.load(Hold.self, id: "late").state.closed)
        #expect(try await scheduler.pending().isEmpty)
    }

    @Test func failurePolicyPerCommand() async throws {
        // A process manager that stops the instance when its command is rejected.
        struct Stopping: ProcessManager {
            let name = "stopping"
            let initialState = HoldProcessState()
            func route(_ envelope: Envelope<HoldEvent>) -> ProcessRouting {
                if case .placed(let e) = envelope.event { return .start(e.hold) }
                return .ignore
            }
            func handle(_ envelope: Envelope<HoldEvent>, state: HoldProcessState) throws -> [ProcessAction] {
                guard case .placed(let e) = envelope.event else { return [] }
                // Confirming a hold of another id that was never placed is rejected.
                return [
                    .dispatch(ConfirmHold(hold: "missing-\(e.hold)")),
                    .schedule(ReleaseHold(hold: e.hold), after: .seconds(60)),
                ]
            }
            func commandFailed(_ failure: CommandFailure) -> CommandFailureAction { .stopInstance }
        }
        let store = InMemoryEventStore()
        let app = BackstageApp(store: store, router: try .holds())
        try await app.dispatch(PlaceHold(hold: "p"))
        let events = try await store.readAll(after: .start, limit: 10, filter: .all)
        let processes = InMemoryProcessStore()
        let manager = try ProcessManagerProjection(Stopping(), store: processes)
        try await manager.apply(
            events, version: 1,
            commit: .checkpoint(subscription: "stopping@v1", expected: nil, new: events[0].logPosition, token: 0))
        let clock = TestClock()
        let scheduler = CommandScheduler(
            app: app, store: processes, commands: .holds, processManagers: [manager], clock: clock)
        #expect(try await scheduler.dispatchDue() == 1)
        #expect(try await manager.instances().isEmpty)
        #expect(try await scheduler.pending().isEmpty)  // the instance's scheduled release went with it

        // The default retries an error that is not a rejection, with backoff by the clock.
        try await scheduler.schedule(PlaceHold(hold: "q"), at: clock.now())
        let unknown = CommandScheduler(app: app, store: processes, commands: CommandCatalog(), clock: clock)
        #expect(try await unknown.dispatchDue() == 1)
        let retried = try await unknown.pending()
        #expect(retried.count == 1 && retried[0].attempts == 1)
        #expect(retried[0].lastError?.contains("CommandCatalog does not know") == true)
        #expect(try await unknown.dispatchDue() == 0)  // not due again yet
        clock.advance(by: .seconds(2))
        #expect(try await scheduler.dispatchDue() == 1)
        #expect(try await app.load(Hold.self, id: "q").state.placed)
    }
}

/// UUIDv5 in the DNS namespace, through the same SHA-1 as the command ids (checks the hash).
private func testUUIDv5DNS(_ name: String) -> String {
    deterministicUUIDv5(namespace: UUID(uuidString: "6ba7b810-9dad-11d1-80b4-00c04fd430c8")!, name: name).uuidString
}
