import Foundation
import Logging
import Metrics
import Synchronization

/// What a subscription is doing.
public enum SubscriptionState: Sendable, Hashable {
    /// Loading its checkpoint.
    case starting
    /// Reading full pages: behind the head of the log.
    case catchingUp
    /// At the head of the log, waiting for new events.
    case live
    /// Stopped (shutdown, or a rebuild caught up).
    case stopped
    /// Stopped by an error: an event that kept failing under ``FinalAction/stop`` (for good), or,
    /// until the service runs it again from its committed checkpoint, a lost lease, a checkpoint
    /// conflict or a failure to start.
    case failed(String)
}

/// A snapshot of one subscription's progress.
public struct SubscriptionStatus: Sendable, Hashable {
    /// The subscription id (a handler's name, or `projection@vN`).
    public var subscription: String
    /// The handler's or projection's name.
    public var name: String
    /// What it is doing.
    public var state: SubscriptionState
    /// The committed checkpoint.
    public var checkpoint: LogPosition?
    /// The low watermark in memory (committed soon after).
    public var processed: LogPosition?
    /// The head of the log when the source last read.
    public var head: LogPosition
    /// Events held in memory now (read, not yet done), markers included.
    public var inFlight: Int
    /// The most events ever held in memory at once.
    public var peakInFlight: Int
    /// Events handled (successfully, skipped or parked) by this run.
    public var handled: Int
    /// Events between the checkpoint and the head (approximate for filtered subscriptions).
    public var lagEvents: Int64 { max(0, head.position - (checkpoint?.position ?? 0)) }
}

/// Why one run of a subscription ended. The service decides from it whether to run again.
enum RunOutcome: Sendable, Hashable {
    /// Asked to stop (shutdown, or superseded by a rebuild).
    case stopped
    /// A run with `untilCaughtUp` processed the head of the log.
    case caughtUp
    /// The lease was lost or a commit was fenced: another process may lead now.
    case leaseLost(String)
    /// The stored checkpoint is not the one this run expected (another process moved it, the
    /// version was dropped by an activation, or a commit whose outcome was unknown did commit).
    case checkpointConflict(String)
    /// The checkpoint could not be loaded, or an event could not be parked: retried after a pause.
    case interrupted(String)
    /// An event kept failing under ``FinalAction/stop``: stopped for good.
    case failed(String)

    /// Whether the service runs the subscription again (from its committed checkpoint).
    var restarts: Bool {
        switch self {
        case .leaseLost, .checkpointConflict, .interrupted: true
        case .stopped, .caughtUp, .failed: false
        }
    }

    /// The readable failure, if the run ended by one.
    var failure: String? {
        switch self {
        case .stopped, .caughtUp: nil
        case .leaseLost(let m), .checkpointConflict(let m), .interrupted(let m), .failed(let m): m
        }
    }

    init(_ error: CheckpointError) {
        switch error {
        case .conflict: self = .checkpointConflict("\(error)")
        case .fenced: self = .leaseLost("\(error)")
        }
    }
}

/// What a runner feeds its events to.
enum PipelineConsumer: Sendable {
    case handler(any EventHandler)
    case projection(any Projection, version: Int)
}

/// Settings of one run of a subscription.
struct RunSettings: Sendable {
    var concurrency: Int
    var partitionKey: PartitionKey
    var batchSize: Int
    var batchTimeout: Duration
    var failurePolicy: FailurePolicy
    var start: StartPosition
    var maxInFlight: Int
    var pageSize: Int
    var pollInterval: Duration
    var checkpointInterval: Duration

    init(_ o: HandlerOptions) {
        concurrency = max(o.concurrency, 1)
        partitionKey = o.partitionKey
        batchSize = max(o.batchSize, 1)
        batchTimeout = o.batchTimeout
        failurePolicy = o.failurePolicy
        start = o.start
        maxInFlight = max(o.maxInFlight, 1)
        pageSize = max(min(o.pageSize, maxInFlight), 1)
        pollInterval = o.pollInterval
        checkpointInterval = o.checkpointInterval
    }

    init(_ o: ProjectionOptions) {
        concurrency = 1
        partitionKey = .stream
        batchSize = max(o.batchSize, 1)
        batchTimeout = o.batchTimeout
        failurePolicy = o.failurePolicy
        start = .origin
        maxInFlight = max(o.maxInFlight, 1)
        pageSize = max(min(o.pageSize, maxInFlight), 1)
        pollInterval = o.pollInterval
        checkpointInterval = .zero
    }
}

/// Runs one subscription: source -> partitions -> workers -> batches -> handler -> acknowledge,
/// with the low-watermark checkpoint.
final class SubscriptionRunner: Sendable {
    private struct Shared {
        var tracker = WatermarkTracker(start: nil)
        var committed: LogPosition?
        var head = LogPosition.start
        var state = SubscriptionState.starting
        var stopping = false
        var workersLeft = 0
        var finished = false
        var peakInFlight = 0
        var handled = 0
        var outcome: RunOutcome?
        var lastCommit = ContinuousClock.now
    }

    let subscription: String
    let name: String
    let consumer: PipelineConsumer
    let settings: RunSettings
    let filter: EventFilter
    let store: any EventStore
    let checkpoints: any CheckpointStore
    let parked: any ParkedEventStore
    let leadership: any LeaderElection
    let token: Int64
    let untilCaughtUp: Bool
    let logger: Logger
    let onCommit: @Sendable (LogPosition) -> Void

    private let shared = Mutex(Shared())
    private let capacity = Signal()
    private let wake = Signal()
    private let commitWanted = Signal()
    private let stopped = Signal(sticky: true)
    private let queues: [WorkQueue]
    private let metrics: SubscriptionMetrics

    init(
        subscription: String, name: String, consumer: PipelineConsumer, settings: RunSettings, filter: EventFilter,
        store: any EventStore, checkpoints: any CheckpointStore, parked: any ParkedEventStore,
        leadership: any LeaderElection, token: Int64, untilCaughtUp: Bool, logger: Logger,
        onCommit: @escaping @Sendable (LogPosition) -> Void
    ) {
        self.subscription = subscription
        self.name = name
        self.consumer = consumer
        self.settings = settings
        self.filter = filter
        self.store = store
        self.checkpoints = checkpoints
        self.parked = parked
        self.leadership = leadership
        self.token = token
        self.untilCaughtUp = untilCaughtUp
        var logger = logger
        logger[metadataKey: "subscription"] = "\(subscription)"
        self.logger = logger
        self.onCommit = onCommit
        self.queues = (0..<settings.concurrency).map { _ in WorkQueue() }
        self.metrics = SubscriptionMetrics(subscription: subscription)
    }

    private var isProjection: Bool {
        if case .projection = consumer { return true }
        return false
    }

    var isStopping: Bool { shared.withLock { $0.stopping } }

    /// The failure that stopped the run, if any.
    var failure: String? { shared.withLock { $0.outcome?.failure } }

    /// Asks the run to stop: stop reading, finish the batches already handed to workers, commit.
    func stop() {
        shared.withLock { $0.stopping = true }
        stopped.signal()
        wake.signal()
        capacity.signal()
        commitWanted.signal()
    }

    private func fail(_ outcome: RunOutcome) {
        shared.withLock { s in
            if s.outcome == nil { s.outcome = outcome }
        }
        stop()
    }

    var status: SubscriptionStatus {
        shared.withLock { s in
            var state = s.state
            if let f = s.outcome?.failure { state = .failed(f) }
            return SubscriptionStatus(
                subscription: subscription, name: name, state: state, checkpoint: s.committed,
                processed: s.tracker.watermark, head: s.head, inFlight: s.tracker.count,
                peakInFlight: s.peakInFlight, handled: s.handled)
        }
    }

    // MARK: Running

    /// Runs until stopped (or, with `untilCaughtUp`, until the head of the log is processed) and
    /// says why it ended.
    func run() async -> RunOutcome {
        let start: LogPosition?
        do {
            start = try await startPosition()
        } catch let error as CheckpointError {
            logger.warning("subscription \(subscription) could not start: \(error)")
            fail(RunOutcome(error))
            shared.withLock { $0.state = .stopped }
            return RunOutcome(error)
        } catch {
            logger.error("subscription \(subscription) could not load its checkpoint: \(error)")
            let outcome = RunOutcome.interrupted("could not load the checkpoint: \(error)")
            fail(outcome)
            shared.withLock { $0.state = .stopped }
            return outcome
        }
        shared.withLock { s in
            s.committed = start
            s.tracker = WatermarkTracker(start: start)
            s.workersLeft = queues.count
            s.state = .catchingUp
        }
        if let start { onCommit(start) }
        logger.info("subscription \(subscription) starts after \(start.map { "\($0)" } ?? "the origin")")
        // Listen before the first read, so no append between the read and the wait is missed.
        let notifications = store.appendNotifications()
        await withTaskGroup(of: Void.self) { outer in
            outer.addTask { [self] in
                for await _ in notifications {
                    wake.signal()
                    if Task.isCancelled { break }
                }
            }
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.runSource(after: start ?? .start) }
                for queue in queues { group.addTask { await self.runWorker(queue) } }
                if !isProjection { group.addTask { await self.runCommitter() } }
            }
            outer.cancelAll()
        }
        let outcome = shared.withLock { s -> RunOutcome in
            s.state = .stopped
            if let outcome = s.outcome { return outcome }
            return untilCaughtUp && !s.stopping ? .caughtUp : .stopped
        }
        updateLag()
        logger.info("subscription \(subscription) stopped at \(status.checkpoint.map { "\($0)" } ?? "the origin")")
        return outcome
    }

    private func startPosition() async throws -> LogPosition? {
        if let stored = try await checkpoints.checkpoint(subscription) { return stored.position }
        let position: LogPosition
        switch settings.start {
        case .origin: return nil
        case .end: position = try await store.headPosition()
        case .after(let p): position = p
        }
        try await commitCheckpoint(expected: nil, new: position)
        return position
    }

    private func commitCheckpoint(expected: LogPosition?, new: LogPosition) async throws {
        try await checkpoints.commit(subscription, expected: expected, new: new, token: token)
    }

    // MARK: Source

    private func runSource(after start: LogPosition) async {
        var cursor = start
        while !isStopping {
            let free = shared.withLock { settings.maxInFlight - $0.tracker.count }
            if free <= 0 {
                await capacity.wait()
                continue
            }
            let limit = min(settings.pageSize, free)
            let head: LogPosition
            let page: [RecordedEvent]
            do {
                // The head is read first: when the page comes back short, every matching event up
                // to the head was in it, so the watermark may move to the head.
                head = try await store.headPosition()
                page = try await store.readAll(after: cursor, limit: limit, filter: filter)
            } catch {
                metrics.readErrors.increment()
                logger.error("subscription \(subscription) failed to read the log after \(cursor): \(error)")
                await wake.wait(timeout: settings.pollInterval)
                continue
            }
            let atEnd = page.count < limit
            var batches = [[WorkItem]](repeating: [], count: queues.count)
            shared.withLock { s in
                s.head = max(s.head, head)
                for event in page {
                    let slot = s.tracker.register(event)
                    batches[partition(of: event)].append(.event(event, slot: slot))
                }
                if atEnd, head > (page.last?.logPosition ?? cursor) { s.tracker.registerMarker(head) }
                s.peakInFlight = max(s.peakInFlight, s.tracker.count)
                s.state = atEnd ? .live : .catchingUp
            }
            if let last = page.last { cursor = last.logPosition }
            if atEnd, head > cursor { cursor = head }
            for (i, items) in batches.enumerated() where !items.isEmpty { queues[i].push(items) }
            if atEnd {
                if isProjection { queues[0].push([.tick]) } else { commitWanted.signal() }
                updateLag()
                if untilCaughtUp { break }
                await wake.wait(timeout: settings.pollInterval)
            }
        }
        for queue in queues { queue.close() }
    }

    private func partition(of event: RecordedEvent) -> Int {
        settings.partitionKey.worker(for: event, concurrency: queues.count)
    }

    // MARK: Workers

    private func runWorker(_ queue: WorkQueue) async {
        defer {
            let last = shared.withLock { s -> Bool in
                s.workersLeft -= 1
                if s.workersLeft == 0 { s.finished = true }
                return s.finished
            }
            if last { commitWanted.signal() }
        }
        while let items = await queue.take(max: settings.batchSize, timeout: settings.batchTimeout) {
            let events = items.compactMap { item -> (RecordedEvent, UInt64)? in
                if case .event(let e, let slot) = item { return (e, slot) }
                return nil
            }
            if !events.isEmpty {
                guard await process(events) else {
                    queue.discardAll()
                    return
                }
            }
            if isProjection, !(await commitProjectionWatermark()) {
                queue.discardAll()
                return
            }
        }
        if isProjection { _ = await commitProjectionWatermark() }
    }

    private func complete(_ events: [(RecordedEvent, UInt64)]) {
        shared.withLock { s in
            for (_, slot) in events { s.tracker.complete(slot) }
            s.handled += events.count
        }
        capacity.signal()
        if !isProjection { commitWanted.signal() }
    }

    /// Handles a batch under the failure policy. False: the worker must stop (its partitions'
    /// order cannot be kept past an unfinished event).
    private func process(_ batch: [(RecordedEvent, UInt64)]) async -> Bool {
        var attempt = 0
        while true {
            attempt += 1
            let started = ContinuousClock.now
            do {
                try await invoke(batch.map(\.0))
                metrics.latency.record(duration: ContinuousClock.now - started)
                metrics.batchSize.record(batch.count)
                metrics.handled.increment(by: batch.count)
                complete(batch)
                return true
            } catch let error as CheckpointError {
                logger.warning("subscription \(subscription) restarts from its committed checkpoint: \(error)")
                fail(RunOutcome(error))
                return false
            } catch {
                metrics.failures.increment()
                let first = batch[0].0.logPosition
                let last = batch[batch.count - 1].0.logPosition
                let what = batch.count == 1 ? "event at \(first)" : "batch \(first)...\(last) (\(batch.count) events)"
                if attempt <= settings.failurePolicy.maxRetries, !isStopping {
                    let wait = settings.failurePolicy.backoff(retry: attempt)
                    logger.warning(
                        "subscription \(subscription): \(what) failed (attempt \(attempt)); retrying in \(wait): \(error)"
                    )
                    metrics.retries.increment()
                    await stopped.wait(timeout: wait)
                    continue
                }
                if isStopping {
                    logger.warning("subscription \(subscription): \(what) left unfinished at shutdown: \(error)")
                    return false
                }
                if batch.count > 1 {
                    logger.warning(
                        "subscription \(subscription): \(what) still fails after \(attempt) attempts; handling its events one by one"
                    )
                    for item in batch {
                        guard await process([item]) else { return false }
                    }
                    return true
                }
                return await giveUp(batch[0], error: error, attempts: attempt)
            }
        }
    }

    private func giveUp(_ item: (RecordedEvent, UInt64), error: any Error, attempts: Int) async -> Bool {
        let event = item.0
        let what = "event at \(event.logPosition) (\(event.type) in \(event.stream))"
        switch settings.failurePolicy.finalAction {
        case .stop:
            logger.error("subscription \(subscription) stops: \(what) failed \(attempts) times: \(error)")
            fail(
                .failed(
                    PipelineError.subscriptionStopped(subscription, position: event.logPosition, error: "\(error)")
                        .description))
            return false
        case .skip:
            logger.error("subscription \(subscription) skips \(what) after \(attempts) attempts: \(error)")
            metrics.skipped.increment()
            complete([item])
            return true
        case .park:
            do {
                try await parked.park(
                    ParkedEvent(subscription: subscription, event: event, error: "\(error)", attempts: attempts))
            } catch let parkError {
                logger.error("subscription \(subscription) stops: \(what) could not be parked: \(parkError)")
                fail(.interrupted("could not park \(what): \(parkError)"))
                return false
            }
            logger.error("subscription \(subscription) parked \(what) after \(attempts) attempts: \(error)")
            metrics.parked.increment()
            complete([item])
            return true
        }
    }

    private func invoke(_ events: [RecordedEvent]) async throws {
        switch consumer {
        case .handler(let handler):
            if events.count == 1 {
                try await handler.handle(events[0])
            } else {
                try await handler.handle(batch: events)
            }
        case .projection(let projection, let version):
            guard await leadership.isLeader(subscription, token: token) else {
                throw CheckpointError.fenced(subscription: subscription, token: token, current: token + 1)
            }
            let expected = shared.withLock { $0.committed }
            let new = events[events.count - 1].logPosition
            try await projection.apply(
                events, version: version,
                commit: .checkpoint(subscription: subscription, expected: expected, new: new, token: token))
            shared.withLock { $0.committed = new }
            onCommit(new)
        }
    }

    // MARK: Checkpoints

    /// Projections: commits the watermark alone when it passed the last committed batch (after a
    /// skipped or parked event, or an end-of-log marker). False when the subscription must stop.
    private func commitProjectionWatermark() async -> Bool {
        let (target, expected) = shared.withLock { ($0.tracker.watermark, $0.committed) }
        guard let target, expected == nil || target > expected! else { return true }
        do {
            try await commitCheckpoint(expected: expected, new: target)
            shared.withLock { $0.committed = target }
            onCommit(target)
            updateLag()
            return true
        } catch let error as CheckpointError {
            logger.warning("subscription \(subscription) restarts from its committed checkpoint: \(error)")
            fail(RunOutcome(error))
            return false
        } catch {
            logger.error("subscription \(subscription) failed to commit its checkpoint \(target): \(error)")
            return true
        }
    }

    /// Handlers: commits the watermark at most every `checkpointInterval`, and once at the end.
    private func runCommitter() async {
        while true {
            let finished = shared.withLock { $0.finished }
            await commitHandlerWatermark()
            if finished { return }
            await commitWanted.wait(timeout: settings.pollInterval)
            if settings.checkpointInterval > .zero, !isStopping {
                await stopped.wait(timeout: settings.checkpointInterval)
            }
        }
    }

    private func commitHandlerWatermark() async {
        let (target, expected) = shared.withLock { ($0.tracker.watermark, $0.committed) }
        guard let target, expected == nil || target > expected! else { return }
        guard await leadership.isLeader(subscription, token: token) else {
            logger.error("subscription \(subscription) lost its leadership; stopping without committing \(target)")
            fail(.leaseLost("leadership lost"))
            return
        }
        do {
            try await commitCheckpoint(expected: expected, new: target)
            shared.withLock { $0.committed = target }
            onCommit(target)
            updateLag()
        } catch let error as CheckpointError {
            logger.warning("subscription \(subscription) restarts from its committed checkpoint: \(error)")
            fail(RunOutcome(error))
        } catch {
            logger.error("subscription \(subscription) failed to commit its checkpoint \(target): \(error)")
        }
    }

    private func updateLag() {
        let (head, committed, oldest) = shared.withLock { ($0.head, $0.committed, $0.tracker.oldestRecordedAt) }
        metrics.lagEvents.record(max(0, head.position - (committed?.position ?? 0)))
        metrics.lagSeconds.record(oldest.map { max(0, Date().timeIntervalSince($0)) } ?? 0)
    }
}
