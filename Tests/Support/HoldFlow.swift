import Backstage
import Foundation

/// A check of the hold flow that failed.
package struct HoldFlowFailure: Error, CustomStringConvertible {
    package var description: String
    package init(_ description: String) { self.description = description }
}

/// Waits (polling) until `condition` holds, up to `timeout`.
package func eventually(
    _ what: String, timeout: Duration = .seconds(60), _ condition: @Sendable () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return }
        if ContinuousClock.now > deadline { throw HoldFlowFailure("timed out waiting until \(what)") }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// Runs the hold flow end to end on `store` with its process store: hold "a" is released by the
/// scheduled command after the (test) clock passes the hold time, hold "b" is confirmed and its
/// release cancelled. Throws ``HoldFlowFailure`` naming the first check that fails.
package func runHoldFlow(
    store: any EventStore, processes: any ProcessStore, clock: any SchedulerClock,
    advance: @escaping @Sendable (Duration) -> Void, prefix: String = "h"
) async throws {
    let app = BackstageApp(store: store, router: try .holds())
    let manager = try ProcessManagerProjection(
        HoldProcess(holdTime: .seconds(600), options: ProjectionOptions(batchTimeout: .milliseconds(1))),
        store: processes)
    let pipelines = try PipelineService(app: app, projections: [manager])
    let scheduler = CommandScheduler(
        app: app, store: processes, commands: .holds, processManagers: [manager], clock: clock,
        pollInterval: .milliseconds(50))
    let a = "\(prefix)a"
    let b = "\(prefix)b"
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await pipelines.run() }
        group.addTask { try await scheduler.run() }
        defer { group.cancelAll() }

        try await app.dispatch(PlaceHold(hold: a))
        try await app.dispatch(PlaceHold(hold: b))
        try await eventually("both holds are acknowledged") {
            let ackA = try await app.load(Hold.self, id: a).state.acknowledged
            let ackB = try await app.load(Hold.self, id: b).state.acknowledged
            return ackA == 1 && ackB == 1
        }
        try await eventually("two releases are scheduled") { try await scheduler.pending().count == 2 }
        let running = try await manager.instances().map(\.key).sorted()
        guard running == [a, b] else { throw HoldFlowFailure("instances \(running), expected [\(a), \(b)]") }

        try await app.dispatch(ConfirmHold(hold: b))
        try await eventually("the release of \(b) is cancelled") {
            try await scheduler.pending().map(\.cancelKey) == ["release-\(a)"]
        }
        guard try await app.load(Hold.self, id: a).state.closed == false else {
            throw HoldFlowFailure("\(a) was released before the hold time")
        }
        advance(.seconds(601))
        scheduler.poke()
        try await eventually("\(a) is released") { try await app.load(Hold.self, id: a).state.closed }
        try await eventually("no instance runs") { try await manager.instances().isEmpty }
        guard try await scheduler.pending().isEmpty else { throw HoldFlowFailure("commands still pending") }

        // Exactly once, and the causation chain: PlaceHold -> HoldPlaced -> ReleaseHold -> HoldReleased.
        let eventsA = try await store.readStream(Hold.streamID(a), from: 1, direction: .forward, limit: 100)
        let typesA = eventsA.map(\.type)
        guard typesA == ["HoldPlaced", "HoldAcknowledged", "HoldReleased"] else {
            throw HoldFlowFailure("events of \(a): \(typesA)")
        }
        let placed = eventsA[0]
        let released = eventsA[2]
        let expectedID = deterministicCommandID(process: "holds", eventID: placed.id, index: 1)
        guard released.metadata.commandID == expectedID,
            released.metadata.fields[commandCausationField] == placed.id.uuidString.lowercased(),
            released.metadata.correlationID == placed.metadata.correlationID,
            released.metadata.fields[commandProcessField] == "holds"
        else { throw HoldFlowFailure("the release's metadata does not chain to the placement: \(released.metadata)") }
        let typesB = try await store.readStream(Hold.streamID(b), from: 1, direction: .forward, limit: 100).map(\.type)
        guard typesB == ["HoldPlaced", "HoldAcknowledged", "HoldConfirmed"] else {
            throw HoldFlowFailure("events of \(b): \(typesB)")
        }
    }
}
