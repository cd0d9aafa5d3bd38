import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import Logging
import ServiceLifecycle
import Testing

@Suite("Pipelines")
struct PipelineTests {
    @Test("per-partition order holds with 8 workers and batches; the checkpoint only advances contiguously")
    func orderingAndContiguousCheckpoint() async throws {
        let store = InMemoryEventStore()
        let appended = try await appendTicks(store, count: 4_000, streams: 37, perAppend: 3)
        let positions = appended.flatMap { Array($0.firstPosition...$0.lastPosition) }
        let handled = PipeBox(Set<Int64>())
        let perStream = PipeBox([String: [Int64]]())
        let batchSizes = PipeBox([Int]())
        let done = PipeCounter()
        let checkpoints = AuditingCheckpointStore(handled: handled, allPositions: positions)
        var options = HandlerOptions(concurrency: 8, batchSize: 16, batchTimeout: .milliseconds(2))
        options.checkpointInterval = .milliseconds(1)
        let handler = ClosureHandler(name: "ordered", options: options) { batch in
            // Uneven work so workers finish out of log order.
            if batch[0].position % 7 == 0 { try await Task.sleep(for: .microseconds(300)) }
            perStream.with { for e in batch { $0[e.stream, default: []].append(e.streamVersion) } }
            batchSizes.with { $0.append(batch.count) }
            handled.with { for e in batch { $0.insert(e.position) } }
            done.add(batch.count)
        }
        let service = try PipelineService(store: store, handlers: [handler], checkpoints: checkpoints)
        let running = RunningService(service)
        // More events while it runs.
        let more = try await appendTicks(store, count: 1_000, streams: 37, perAppend: 2, prefix: "late")
        checkpoints.allPositions.with { $0 += more.flatMap { Array($0.firstPosition...$0.lastPosition) } }
        try await done.wait(for: 5_000)
        try await service.waitUntilProcessed()
        try await running.stop()

        for (stream, versions) in perStream.value {
            #expect(versions == Array(1...Int64(versions.count)), "stream \(stream) out of order or duplicated")
        }
        #expect(perStream.value.values.reduce(0) { $0 + $1.count } == 5_000)
        #expect(batchSizes.value.contains { $0 > 1 }, "batches were formed")
        #expect(checkpoints.violations.value.isEmpty, "\(checkpoints.violations.value.prefix(3))")
        #expect(checkpoints.commits.value.count > 2)
        #expect(try await checkpoints.checkpoint("ordered")?.position == LogPosition(position: 5_000))
    }

    @Test("a failing event holds the checkpoint while other partitions go on; it resumes once the event succeeds")
    func failingEventHoldsCheckpoint() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 600, streams: 6)
        let bad: Int64 = 200
        let badEvent = try await store.readAll(after: LogPosition(position: bad - 1), limit: 1, filter: .all)[0]
        let badStream = badEvent.stream
        // A worker handles its partitions in order: the streams of other workers must go on.
        let badWorker = PartitionKey.stream.worker(for: badEvent, concurrency: 4)
        let othersTotal = try await store.readAll(after: .start, limit: 1_000, filter: .all)
            .filter { PartitionKey.stream.worker(for: $0, concurrency: 4) != badWorker }.count
        #expect(othersTotal > 100)
        let failing = PipeBox(true)
        let handled = PipeBox([Int64: Int]())
        let attempts = PipeCounter()
        let others = PipeCounter()
        var options = HandlerOptions(concurrency: 4)
        options.failurePolicy = FailurePolicy(
            maxRetries: 100_000, initialBackoff: .milliseconds(1), maxBackoff: .milliseconds(2), jitter: 0)
        let handler = ClosureHandler(name: "stall", options: options) { batch in
            for e in batch {
                if e.position == bad, failing.value {
                    attempts.add()
                    throw PipeFailure(position: bad)
                }
                handled.with { $0[e.position, default: 0] += 1 }
                if PartitionKey.stream.worker(for: e, concurrency: 4) != badWorker { others.add() }
            }
        }
        let service = try PipelineService(store: store, handlers: [handler])
        let running = RunningService(service)
        // Every event of the other workers' partitions is handled although one event keeps failing.
        try await others.wait(for: othersTotal)
        try await attempts.wait(for: 5)
        let stalled = try #require(service.status(of: "stall"))
        #expect((stalled.processed ?? .start) < LogPosition(position: bad))
        #expect((stalled.checkpoint ?? .start) < LogPosition(position: bad))
        #expect(badStream == "tick-\((bad - 1) % 6)")
        let laterInBadStream = handled.value.keys.filter { $0 > bad && (($0 - 1) % 6) == ((bad - 1) % 6) }
        #expect(laterInBadStream.isEmpty, "events after the failing one in its partition must wait")
        failing.with { $0 = false }
        try await service.waitUntilProcessed(LogPosition(position: 600))
        try await running.stop()
        #expect(handled.value.count == 600)
        #expect(handled.value.values.allSatisfy { $0 == 1 })
    }

    @Test("after the retries, a parked event lets the checkpoint move on; it can be listed, replayed and discarded")
    func parkAndReplay() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 300, streams: 5)
        let poisoned: Set<Int64> = [50, 51, 120]
        let broken = PipeBox(true)
        let handled = PipeBox([Int64: Int]())
        var options = HandlerOptions(concurrency: 3, batchSize: 8, batchTimeout: .milliseconds(1))
        options.failurePolicy = FailurePolicy(
            maxRetries: 2, initialBackoff: .milliseconds(1), maxBackoff: .milliseconds(2), finalAction: .park)
        let handler = ClosureHandler(name: "parking", options: options) { batch in
            for e in batch where poisoned.contains(e.position) && broken.value {
                throw PipeFailure(position: e.position)
            }
            handled.with { for e in batch { $0[e.position, default: 0] += 1 } }
        }
        let service = try PipelineService(store: store, handlers: [handler])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 300))
        let parked = try await service.parkedEvents(subscription: "parking")
        #expect(parked.map(\.event.position) == [50, 51, 120])
        #expect(parked.allSatisfy { $0.attempts == 3 && $0.error.contains("deliberate failure") })
        // Nothing after a parked event was lost.
        #expect(Set(handled.value.keys) == Set(1...300).subtracting(poisoned))
        #expect(service.status(of: "parking")?.checkpoint == LogPosition(position: 300))

        broken.with { $0 = false }
        try await service.replayParked(subscription: "parking", position: LogPosition(position: 50))
        try await service.discardParked(subscription: "parking", position: LogPosition(position: 51))
        #expect(try await service.parkedEvents(subscription: "parking").map(\.event.position) == [120])
        await #expect(throws: PipelineError.self) {
            try await service.discardParked(subscription: "parking", position: LogPosition(position: 51))
        }
        try await running.stop()
        #expect(handled.value[50] == 1)
        #expect(handled.value[51] == nil)
    }

    @Test("skip moves past a failing event; stop keeps the checkpoint before it, also after a restart")
    func skipAndStop() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 100, streams: 4)
        let handled = PipeBox(Set<Int64>())
        func handler(_ name: String, _ action: FinalAction) -> ClosureHandler {
            var options = HandlerOptions(concurrency: 2)
            options.failurePolicy = FailurePolicy(
                maxRetries: 1, initialBackoff: .milliseconds(1), maxBackoff: .milliseconds(1), finalAction: action)
            return ClosureHandler(name: name, options: options) { batch in
                for e in batch where e.position == 40 { throw PipeFailure(position: 40) }
                if name == "skipper" { handled.with { for e in batch { $0.insert(e.position) } } }
            }
        }
        let checkpoints = InMemoryCheckpointStore()
        let service = try PipelineService(
            store: store, handlers: [handler("skipper", .skip), handler("stopper", .stop)], checkpoints: checkpoints)
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 100), subscriptions: ["skipper"])
        #expect(handled.value == Set(1...100).subtracting([40]))
        await #expect(throws: PipelineTimeout.self) {
            try await service.waitUntilProcessed(
                LogPosition(position: 100), subscriptions: ["stopper"], timeout: .milliseconds(300))
        }
        let stopped = try #require(service.status(of: "stopper"))
        guard case .failed(let reason) = stopped.state else {
            Issue.record("expected the subscription to fail, got \(stopped.state)")
            return
        }
        #expect(reason.contains("position 40"))
        #expect((stopped.checkpoint ?? .start) < LogPosition(position: 40))
        try await running.stop()
        #expect(try await checkpoints.checkpoint("stopper").map { $0.position < LogPosition(position: 40) } ?? true)
        #expect(try await service.parkedEvents().isEmpty)

        // A restart meets the same event and stops again: it never passes it silently.
        let again = try PipelineService(store: store, handlers: [handler("stopper", .stop)], checkpoints: checkpoints)
        let rerun = RunningService(again)
        await #expect(throws: PipelineTimeout.self) {
            try await again.waitUntilProcessed(LogPosition(position: 100), timeout: .milliseconds(300))
        }
        try await rerun.stop()
        #expect(try await checkpoints.checkpoint("stopper").map { $0.position < LogPosition(position: 40) } ?? true)
    }

    @Test("back-pressure: with a handler slower than the writers, events in memory stay under the bound")
    func backPressure() async throws {
        let inner = InMemoryEventStore()
        let store = RecordingEventStore(inner)
        let handledCount = PipeBox(0)
        let progress = PipeCounter()
        let worst = PipeBox(0)
        var options = HandlerOptions(concurrency: 2, batchSize: 4, maxInFlight: 64)
        options.pageSize = 32
        let handler = ClosureHandler(name: "slow", options: options) { batch in
            let held = store.eventsReadFromLog - handledCount.value
            worst.with { $0 = max($0, held) }
            try await Task.sleep(for: .milliseconds(2))
            handledCount.with { $0 += batch.count }
            progress.add(batch.count)
        }
        let service = try PipelineService(store: store, handlers: [handler])
        let running = RunningService(service)
        // Writers far faster than the handler.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<4 {
                group.addTask { try await appendTicks(inner, count: 500, streams: 10, perAppend: 5, prefix: "w\(w)") }
            }
            try await group.waitForAll()
        }
        try await progress.wait(for: 100)
        let midway = try #require(service.status(of: "slow"))
        #expect(midway.lagEvents > 500, "the handler is behind the writers")
        try await service.waitUntilProcessed(LogPosition(position: 2_000), timeout: .seconds(60))
        try await running.stop()
        #expect(handledCount.value == 2_000)
        #expect(store.eventsReadFromLog == 2_000)
        #expect(worst.value <= 64, "held \(worst.value) events")
        #expect(worst.value > 8, "the bound was actually reached")
        #expect(try #require(service.status(of: "slow")).peakInFlight <= 64)
    }

    @Test("start positions: the current end, or after a given position")
    func startPositions() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 10, streams: 2)
        let seen = PipeBox([String: [Int64]]())
        func handler(_ name: String, _ start: StartPosition) -> ClosureHandler {
            var options = HandlerOptions()
            options.start = start
            return ClosureHandler(name: name, options: options) { batch in
                seen.with { for e in batch { $0[name, default: []].append(e.position) } }
            }
        }
        let service = try PipelineService(
            store: store,
            handlers: [
                handler("origin", .origin), handler("end", .end),
                handler("after", .after(LogPosition(position: 7))),
            ])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 10))
        try await appendTicks(store, count: 2, streams: 1, prefix: "new")
        try await service.waitUntilProcessed(LogPosition(position: 12))
        try await running.stop()
        #expect(seen.value["origin"] == Array(1...12))
        #expect(seen.value["end"] == [11, 12])
        #expect(seen.value["after"] == [8, 9, 10, 11, 12])
    }

    @Test("a filtered subscription gets only matching events and its checkpoint still reaches the head")
    func filteredSubscription() async throws {
        let store = InMemoryEventStore()
        try await appendTicks(store, count: 20, streams: 2, prefix: "alpha")
        _ = try await store.append(
            [EventData(type: "Tock", data: Data("{}".utf8))], to: "beta-1", expected: .any, commandID: nil)
        try await appendTicks(store, count: 5, streams: 1, prefix: "alpha")
        let seen = PipeBox([String]())
        let handler = ClosureHandler(name: "tocks", filter: EventFilter(types: ["Tock"])) { batch in
            seen.with { $0 += batch.map(\.type) }
        }
        let service = try PipelineService(store: store, handlers: [handler])
        let running = RunningService(service)
        try await service.waitUntilProcessed(LogPosition(position: 26))
        try await running.stop()
        #expect(seen.value == ["Tock"])
        #expect(service.status(of: "tocks")?.checkpoint == LogPosition(position: 26))
    }

    @Test("names are checked")
    func names() throws {
        let store = InMemoryEventStore()
        #expect(throws: PipelineError.self) {
            try PipelineService(store: store, handlers: [ClosureHandler(name: "bad name") { _ in }])
        }
        #expect(throws: PipelineError.self) {
            try PipelineService(
                store: store,
                handlers: [ClosureHandler(name: "twice") { _ in }, ClosureHandler(name: "twice") { _ in }])
        }
    }
}
