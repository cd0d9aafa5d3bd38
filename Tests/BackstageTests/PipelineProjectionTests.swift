import Backstage
import BackstageTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// Read model for the in-memory projection tests: how many times each position was applied.
struct AppliedLog: Sendable {
    var counts: [Int64: Int] = [:]
    var perStream: [String: Int] = [:]
}

func appliedLogProjection(
    _ name: String = "applied", options: ProjectionOptions = ProjectionOptions()
) -> InMemoryProjection<AppliedLog> {
    InMemoryProjection(name: name, options: options, initial: AppliedLog()) { log, event in
        log.counts[event.position, default: 0] += 1
        log.perStream[event.stream, default: 0] += 1
    }
}

@Suite("Pipelines: projections, consistency, lifecycle")
struct PipelineProjectionTests {
    @Test("a query right after a .strong dispatch sees the new state")
    func strongConsistency() async throws {
        let store = InMemoryEventStore()
        let app = try tallyApp(store)
        // A batch timeout far longer than a dispatch: an eventual read would see nothing yet.
        let totals = InMemoryProjection(
            name: "totals", options: ProjectionOptions(batchSize: 1_000, batchTimeout: .milliseconds(300)),
            initial: [String: Int]()
        ) { totals, event in
            if let bumped = try event.decode(as: TallyBumped.self) { totals[event.stream, default: 0] += bumped.by }
        }
        let service = try PipelineService(app: app, projections: [totals])
        let running = RunningService(service)
        for i in 1...5 {
            try await app.dispatch(Bump(id: "a", by: i), options: DispatchOptions(consistency: .strong))
            #expect(totals.state["tally-a"] == (1...i).reduce(0, +))
        }
        try await app.dispatch(Bump(id: "b", by: 7), options: DispatchOptions(consistency: .projections(["totals"])))
        #expect(totals.state["tally-b"] == 7)
        try await running.stop()
    }

    @Test(
        "a .strong dispatch whose projection cannot catch up fails with its own timeout error saying the events were stored"
    )
    func strongConsistencyTimeout() async throws {
        let store = InMemoryEventStore()
        let app = try tallyApp(store)
        let stuck = InMemoryProjection(
            name: "stuck",
            options: ProjectionOptions(failurePolicy: FailurePolicy(maxRetries: 0, finalAction: .stop)),
            initial: 0
        ) { _, event in throw PipeFailure(position: event.position) }
        let service = try PipelineService(app: app, projections: [stuck])
        let running = RunningService(service)
        do {
            try await app.dispatch(
                Bump(id: "x", by: 1), options: DispatchOptions(consistency: .strong, timeout: .milliseconds(200)))
            Issue.record("the dispatch should have timed out")
        } catch let error as ConsistencyError {
            #expect("\(error)".contains("the events were stored"))
            #expect("\(error)".contains("stuck"))
        }
        #expect(try await store.streamVersion("tally-x") == 1)
        await #expect(throws: ConsistencyError.self) {
            try await app.dispatch(
                Bump(id: "x", by: 1), options: DispatchOptions(consistency: .projections(["nonexistent"])))
        }
        try await running.stop()
    }

    @Test(
        "graceful shutdown mid-stream: projections apply each event once across the restart; handlers at most once more"
    )
    func gracefulShutdownMidStream() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 3_000, streams: 20)
        let projection = appliedLogProjection(options: ProjectionOptions(batchSize: 50, batchTimeout: .zero))
        let handledTimes = PipeBox([Int64: Int]())
        let progress = PipeCounter()
        let handler = ClosureHandler(
            name: "mailer", options: HandlerOptions(concurrency: 4, batchSize: 5, batchTimeout: .milliseconds(1))
        ) { batch in
            try await Task.sleep(for: .microseconds(200))
            handledTimes.with { for e in batch { $0[e.position, default: 0] += 1 } }
            progress.add(batch.count)
        }
        let checkpoints = InMemoryCheckpointStore()
        let logger = Logger(label: "test")

        // First run, through a ServiceGroup stopped by graceful shutdown in the middle.
        let first = try PipelineService(
            store: store, handlers: [handler], projections: [projection], checkpoints: checkpoints)
        let group = ServiceGroup(configuration: .init(services: [first], logger: logger))
        let run = Task { try await group.run() }
        try await progress.wait(for: 600)
        await group.triggerGracefulShutdown()
        try await run.value
        let handlerCheckpoint = try #require(try await checkpoints.checkpoint("mailer")).position
        let projectionCheckpoint = try #require(try await projection.checkpoints.checkpoint("applied@v1")).position
        #expect(handlerCheckpoint.position < 3_000, "the shutdown happened mid-stream")
        // The committed checkpoint is the drained watermark.
        #expect(first.status(of: "mailer")?.processed == handlerCheckpoint)
        #expect(projection.state.counts.count == Int(projectionCheckpoint.position))

        // Second run to the end.
        let second = try PipelineService(
            store: store, handlers: [handler], projections: [projection], checkpoints: checkpoints)
        let running = RunningService(second)
        try await second.waitUntilProcessed(LogPosition(position: 3_000))
        try await running.stop()

        #expect(projection.state.counts.count == 3_000)
        #expect(projection.state.counts.values.allSatisfy { $0 == 1 }, "a projection applied an event twice")
        let times = handledTimes.value
        #expect(times.count == 3_000, "a handler lost events")
        #expect(times.values.allSatisfy { $0 <= 2 }, "a handler saw an event more than twice")
        #expect(times.filter { $0.value == 2 }.keys.allSatisfy { $0 > handlerCheckpoint.position })
    }

    @Test("rebuild fills a new version from the origin while the old one serves, then switches")
    func rebuildWhileServing() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 500, streams: 5)
        let projection = appliedLogProjection()
        let service = try PipelineService(store: store, projections: [projection])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 500))
        #expect(projection.state.counts.count == 500)
        let version = try await service.rebuild(projection: "applied")
        #expect(version == 2)
        #expect(try await projection.activeVersion() == 2)
        #expect(projection.state(version: 1) == nil, "the old version was dropped")
        #expect(projection.state.counts.count == 500)
        // The live subscription moved to the new version.
        try await appendTicks(store, count: 100, streams: 5, prefix: "after")
        try await service.waitUntilProcessed(LogPosition(position: 600))
        try await running.stop()
        #expect(projection.state.counts.count == 600)
        #expect(projection.state.counts.values.allSatisfy { $0 == 1 })
        #expect(service.status(of: "applied")?.subscription == "applied@v2")
    }

    @Test("a parked projection event is replayed once, without moving the checkpoint")
    func projectionParkAndReplay() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 50, streams: 2)
        let broken = PipeBox(true)
        let projection = InMemoryProjection(
            name: "picky",
            options: ProjectionOptions(
                batchSize: 10, failurePolicy: FailurePolicy(maxRetries: 1, initialBackoff: .milliseconds(1))),
            initial: [Int64]()
        ) { seen, event in
            if event.position == 17, broken.value { throw PipeFailure(position: 17) }
            seen.append(event.position)
        }
        let service = try PipelineService(store: store, projections: [projection])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 50))
        #expect(projection.state == Array(1...50).filter { $0 != 17 })
        #expect(try await service.parkedEvents().map(\.subscription) == ["picky@v1"])
        broken.with { $0 = false }
        try await service.replayParked(subscription: "picky@v1", position: LogPosition(position: 17))
        #expect(projection.state.sorted() == Array(1...50))
        #expect(try await service.parkedEvents().isEmpty)
        try await running.stop()
    }
}
