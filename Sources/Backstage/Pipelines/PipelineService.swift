import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Runs event handlers and projections over an event store, as a swift-service-lifecycle
/// `Service`.
///
/// Each handler and projection is a subscription with its own checkpoint: a source reads the log
/// after the checkpoint in pages (filter pushed into the store), wakes on append notifications and
/// polls as a fallback; events are partitioned by key (order kept inside a partition), handled by
/// N workers in batches, acknowledged, and the checkpoint (the low watermark) is committed.
/// Graceful shutdown stops reading, drains the batches handed to workers and commits checkpoints.
///
/// ```swift
/// let pipelines = try PipelineService(app: app, handlers: [ReceiptSender()], projections: [tickets])
/// let group = ServiceGroup(services: [pipelines], gracefulShutdownSignals: [.sigterm], logger: logger)
/// try await group.run()
/// ```
public final class PipelineService: Service, Sendable {
    private struct State {
        var stopping = false
        var live: [String: SubscriptionRunner] = [:]
        var rebuilding: [String: SubscriptionRunner] = [:]
        var superseded: Set<ObjectIdentifier> = []
    }

    /// The store the subscriptions read.
    public let store: any EventStore
    /// The handlers, by name.
    public let handlers: [String: any EventHandler]
    /// The projections, by name.
    public let projections: [String: any Projection]
    /// Where handlers keep their checkpoints.
    public let checkpoints: any CheckpointStore
    /// Where parked events go (for projections without a store of their own).
    public let parkedEvents: any ParkedEventStore
    /// Who leads each subscription.
    public let leadership: any LeaderElection
    /// Where projections publish their progress for strongly consistent dispatches.
    public let consistency: ConsistencyRegistry
    let logger: Logger
    private let state = Mutex(State())
    private let stopped = Signal(sticky: true)
    private let progress = Signal()

    /// Creates a service over `store`.
    ///
    /// `checkpoints`, `parkedEvents` and `leadership` default (nil) to the store's
    /// ``EventStore/pipelineDefaults``: durable checkpoints and parked events and a multi-process
    /// election in the store's database for the SQLite and PostgreSQL stores, so a restarted
    /// service resumes where it stopped and each subscription runs in one process at a time.
    /// Pass in-memory ones (``PipelineDefaults/inMemory()``) only for tests.
    ///
    /// - Throws: ``PipelineError`` for an invalid or duplicate name.
    public init(
        store: any EventStore, handlers: [any EventHandler] = [], projections: [any Projection] = [],
        checkpoints: (any CheckpointStore)? = nil, parkedEvents: (any ParkedEventStore)? = nil,
        leadership: (any LeaderElection)? = nil, consistency: ConsistencyRegistry = ConsistencyRegistry(),
        logger: Logger = Logger(label: "backstage.pipelines")
    ) throws(PipelineError) {
        var names = Set<String>()
        var byName: [String: any EventHandler] = [:]
        for h in handlers {
            try validateSubscriptionName(h.name)
            if h.name.contains("@") { throw .invalidName(h.name, reason: "'@' is reserved for projection versions") }
            guard names.insert(h.name).inserted else { throw .duplicateSubscription(h.name) }
            byName[h.name] = h
        }
        var projectionsByName: [String: any Projection] = [:]
        for p in projections {
            try validateSubscriptionName(p.name)
            if p.name.contains("@") { throw .invalidName(p.name, reason: "'@' is reserved for projection versions") }
            guard names.insert(p.name).inserted else { throw .duplicateSubscription(p.name) }
            projectionsByName[p.name] = p
        }
        let defaults: PipelineDefaults? =
            checkpoints == nil || parkedEvents == nil || leadership == nil ? store.pipelineDefaults : nil
        let partitioned =
            handlers.map { ($0.name, $0.options.partitions, $0.options.partitionKey) }
            + projections.map { ($0.name, $0.options.partitions, $0.options.partitionKey) }
        for (name, count, key) in partitioned where count > 1 {
            guard (defaults ?? store.pipelineDefaults).supportsPartitions else {
                throw .partitionsUnsupported(
                    name, reason: "the store does not select partitions (SQLite runs a subscription in one process)")
            }
            guard storePartitionKey(key) != nil else {
                throw .partitionsUnsupported(name, reason: "a custom partition key cannot be selected by the store")
            }
            guard count <= 1_024 else { throw .partitionsUnsupported(name, reason: "more than 1024 partitions") }
        }
        self.store = store
        self.handlers = byName
        self.projections = projectionsByName
        self.checkpoints = checkpoints ?? defaults!.checkpoints
        self.parkedEvents = parkedEvents ?? defaults!.parkedEvents
        self.leadership = leadership ?? defaults!.leadership
        self.consistency = consistency
        self.logger = logger
        for p in projections { consistency.register(p) }
    }

    /// Creates a service over the app's store whose projections serve the app's strongly
    /// consistent dispatches (``BackstageApp/consistency``). `checkpoints`, `parkedEvents` and
    /// `leadership` default (nil) to the store's ``EventStore/pipelineDefaults``.
    public convenience init(
        app: BackstageApp, handlers: [any EventHandler] = [], projections: [any Projection] = [],
        checkpoints: (any CheckpointStore)? = nil, parkedEvents: (any ParkedEventStore)? = nil,
        leadership: (any LeaderElection)? = nil, logger: Logger = Logger(label: "backstage.pipelines")
    ) throws(PipelineError) {
        try self.init(
            store: app.store, handlers: handlers, projections: projections, checkpoints: checkpoints,
            parkedEvents: parkedEvents, leadership: leadership, consistency: app.consistency, logger: logger)
    }

    // MARK: Running

    /// Runs every subscription until graceful shutdown (or ``stop()``), then drains and commits.
    ///
    /// A subscription whose lease is lost or fenced, or whose checkpoint was moved by someone else,
    /// gives its lease back, becomes a candidate again and resumes from its committed checkpoint;
    /// only an event that keeps failing under ``FinalAction/stop`` stops it for good. The
    /// election's background work (``LeaderElection/run()``) runs for as long as the subscriptions do.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withTaskGroup(of: Void.self) { outer in
                    outer.addTask {
                        do {
                            try await self.leadership.run()
                        } catch is CancellationError {
                        } catch {
                            self.logger.error("the leader election stopped: \(error)")
                        }
                    }
                    await withTaskGroup(of: Void.self) { group in
                        for handler in handlers.values { group.addTask { await self.runHandler(handler) } }
                        for projection in projections.values { group.addTask { await self.runProjection(projection) } }
                        // A subscription stopped by a failure stays stopped; the service keeps running
                        // (and serving its status) until shutdown.
                        group.addTask { await self.stopped.wait() }
                    }
                    outer.cancelAll()
                }
            } onCancel: {
                self.stop()
            }
        } onGracefulShutdown: {
            self.stop()
        }
    }

    /// Stops every subscription gracefully: stop reading, finish handed-out batches, commit, and
    /// give the leases back. A subscription still waiting for its lease stops waiting.
    public func stop() {
        let runners = state.withLock { s in
            s.stopping = true
            return Array(s.live.values) + Array(s.rebuilding.values)
        }
        stopped.signal()
        for r in runners { r.stop() }
    }

    private var isStopping: Bool { state.withLock { $0.stopping } }

    /// Waits for the lease of `subscription`, or for ``stop()``: nil when the service stops first
    /// (a lease granted meanwhile is given back).
    private func acquire(_ subscription: String, partition: (Int, Int, String)? = nil) async throws -> Int64? {
        let result = await withTaskGroup(of: Result<Int64, any Error>?.self) { group in
            group.addTask {
                do {
                    if let (p, n, base) = partition {
                        return .success(try await self.leadership.acquire(partition: p, of: n, subscription: base))
                    }
                    return .success(try await self.leadership.acquire(subscription))
                } catch { return .failure(error) }
            }
            group.addTask {
                await self.stopped.wait()
                return nil
            }
            var acquired: Result<Int64, any Error>?
            if let first = await group.next(), let first { acquired = first }
            group.cancelAll()
            for await late in group { if let late { acquired = late } }
            return acquired
        }
        switch result {
        case .success(let token):
            if isStopping {
                await leadership.release(subscription, token: token)
                return nil
            }
            return token
        case .failure(let error):
            if isStopping { return nil }
            throw error
        case nil:
            return nil
        }
    }

    /// Pauses before running a subscription again after a failure to start; false when stopping.
    private func pause(_ interval: Duration) async -> Bool {
        await stopped.wait(timeout: interval)
        return !isStopping
    }

    private func runHandler(_ handler: any EventHandler) async {
        let count = max(handler.options.partitions, 1)
        guard count > 1 else {
            await runHandler(handler, partition: nil)
            return
        }
        await withTaskGroup(of: Void.self) { group in
            for p in 0..<count { group.addTask { await self.runHandler(handler, partition: p) } }
        }
    }

    /// The filter of partition `partition` (nil: not partitioned) of a subscription.
    private func filter(
        _ filter: EventFilter, partition: Int?, of count: Int, key: PartitionKey
    ) -> EventFilter {
        guard let partition, count > 1, let key = storePartitionKey(key) else { return filter }
        var f = filter
        f.partition = EventPartition(key: key, index: partition, count: count)
        return f
    }

    private func runHandler(_ handler: any EventHandler, partition: Int?) async {
        let count = max(handler.options.partitions, 1)
        let id = partition.map { partitionSubscription(handler.name, partition: $0, of: count) } ?? handler.name
        let filter = filter(handler.filter, partition: partition, of: count, key: handler.options.partitionKey)
        while !isStopping {
            let token: Int64
            do {
                guard let granted = try await acquire(id, partition: partition.map { ($0, count, handler.name) })
                else { break }
                token = granted
            } catch {
                logger.error("could not acquire the lease of \(id): \(error)")
                guard await pause(handler.options.pollInterval) else { break }
                continue
            }
            let runner = SubscriptionRunner(
                subscription: id, name: handler.name, consumer: .handler(handler),
                settings: RunSettings(handler.options), filter: filter, store: store, checkpoints: checkpoints,
                parked: parkedEvents, leadership: leadership, token: token, untilCaughtUp: false, logger: logger,
                onCommit: { [weak self] _ in self?.progress.signal() })
            guard register(runner, live: id) else {
                await leadership.release(id, token: token)
                break
            }
            let outcome = await runner.run()
            await leadership.release(id, token: token)
            if partition != nil { unregister(runner, live: id) }
            guard await again(after: outcome, of: id, interval: handler.options.pollInterval) else { break }
        }
    }

    /// Forgets a partition's runner once its run ended: the partition may run in another process now.
    private func unregister(_ runner: SubscriptionRunner, live key: String) {
        state.withLock { s in
            if let current = s.live[key], current === runner { s.live[key] = nil }
        }
    }

    /// Whether to run a subscription again after a run ended with `outcome`.
    private func again(after outcome: RunOutcome, of name: String, interval: Duration) async -> Bool {
        switch outcome {
        case .leaseLost, .checkpointConflict:
            logger.notice("subscription \(name) becomes a candidate again: \(outcome.failure ?? "")")
            return !isStopping
        case .interrupted:
            return await pause(interval)
        case .stopped, .caughtUp, .failed:
            return false
        }
    }

    /// Registers a live runner unless the service is stopping; false when it is.
    private func register(_ runner: SubscriptionRunner, live name: String) -> Bool {
        let ok = state.withLock { s -> Bool in
            guard !s.stopping else { return false }
            s.live[name] = runner
            return true
        }
        return ok
    }

    private func runProjection(_ projection: any Projection) async {
        let count = max(projection.options.partitions, 1)
        guard count > 1 else {
            await runProjection(projection, partition: nil)
            return
        }
        await withTaskGroup(of: Void.self) { group in
            for p in 0..<count { group.addTask { await self.runProjection(projection, partition: p) } }
        }
    }

    private func runProjection(_ projection: any Projection, partition: Int?) async {
        let settings = RunSettings(projection.options)
        let count = settings.partitions
        let filter = filter(projection.filter, partition: partition, of: count, key: projection.options.partitionKey)
        let liveKey =
            partition.map { partitionSubscription(projection.name, partition: $0, of: count) } ?? projection.name
        while !isStopping {
            let version: Int
            let token: Int64
            let subscription: String
            do {
                version = try await projection.activeVersion()
                let base = projectionSubscription(projection.name, version: version)
                subscription = partition.map { partitionSubscription(base, partition: $0, of: count) } ?? base
                guard let granted = try await acquire(subscription, partition: partition.map { ($0, count, base) })
                else { break }
                token = granted
            } catch {
                logger.error("projection \(projection.name) could not start: \(error)")
                guard await pause(settings.pollInterval) else { break }
                continue
            }
            // The wait for the lease may have been long: a rebuild (in any process) may have
            // activated another version and dropped this one meanwhile.
            let current: Int
            do {
                current = try await projection.activeVersion()
            } catch {
                await leadership.release(subscription, token: token)
                logger.error("projection \(projection.name) could not start: \(error)")
                guard await pause(settings.pollInterval) else { break }
                continue
            }
            guard current == version else {
                await leadership.release(subscription, token: token)
                logger.notice("projection \(projection.name) moves from version \(version) to version \(current)")
                continue
            }
            let registry = consistency
            let name = projection.name
            // A partition's checkpoint is not the projection's: strong consistency reads the
            // lowest of the partitions' committed checkpoints instead (ConsistencyRegistry).
            let publishes = partition == nil
            let runner = SubscriptionRunner(
                subscription: subscription, name: name, consumer: .projection(projection, version: version),
                settings: settings, filter: filter, store: store, checkpoints: projection.checkpoints,
                parked: projection.parkedEvents ?? parkedEvents, leadership: leadership, token: token,
                untilCaughtUp: false, logger: logger,
                onCommit: { [weak self] position in
                    if publishes { registry.update(name, position: position) }
                    self?.progress.signal()
                })
            guard register(runner, live: liveKey) else {
                await leadership.release(subscription, token: token)
                break
            }
            let outcome = await runner.run()
            await leadership.release(subscription, token: token)
            if partition != nil { unregister(runner, live: liveKey) }
            let superseded = state.withLock { $0.superseded.remove(ObjectIdentifier(runner)) != nil }
            if superseded { continue }
            guard await again(after: outcome, of: subscription, interval: settings.pollInterval) else { break }
        }
    }

    // MARK: Observing

    /// The status of every live subscription and running rebuild.
    public func status() -> [SubscriptionStatus] {
        let runners = state.withLock { Array($0.live.values) + Array($0.rebuilding.values) }
        return runners.map(\.status).sorted { $0.subscription < $1.subscription }
    }

    /// The status of the live subscription of a handler or projection.
    public func status(of name: String) -> SubscriptionStatus? {
        state.withLock { $0.live[name] }?.status
    }

    /// Waits until the named handlers and projections (all when nil) have committed checkpoints at
    /// or after `position` (the head of the log when nil).
    /// - Throws: ``PipelineError/unknownSubscription(_:)``; `CancellationError` after `timeout`.
    public func waitUntilProcessed(
        _ position: LogPosition? = nil, subscriptions names: [String]? = nil, timeout: Duration = .seconds(30)
    ) async throws {
        let target: LogPosition
        if let position { target = position } else { target = try await store.headPosition() }
        let names = names ?? (Array(handlers.keys) + Array(projections.keys))
        for name in names where handlers[name] == nil && projections[name] == nil {
            throw PipelineError.unknownSubscription(name)
        }
        let deadline = ContinuousClock.now + timeout
        // Partitioned subscriptions run (partly) in other processes: their committed checkpoints count.
        var partitionedDone = Set<String>()
        var nextRead = ContinuousClock.now
        while true {
            if ContinuousClock.now >= nextRead {
                for name in names where !partitionedDone.contains(name) {
                    guard let committed = try? await committedPartitioned(name) else { continue }
                    if committed >= target { partitionedDone.insert(name) }
                }
                nextRead = ContinuousClock.now + .milliseconds(50)
            }
            let behind = names.filter { name in
                if partitions(of: name) > 1 { return !partitionedDone.contains(name) }
                guard let status = status(of: name) else { return true }
                if case .failed = status.state { return true }
                return (status.checkpoint ?? .start) < target
            }
            if behind.isEmpty { return }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                throw PipelineTimeout(position: target, subscriptions: behind.sorted(), timeout: timeout)
            }
            await progress.wait(timeout: min(remaining, .milliseconds(50)))
        }
    }

    /// The number of partitions of the handler or projection `name` (1 when unknown).
    private func partitions(of name: String) -> Int {
        max(handlers[name]?.options.partitions ?? projections[name]?.options.partitions ?? 1, 1)
    }

    /// The lowest committed checkpoint of the partitions of a partitioned handler or projection
    /// (nil when not partitioned, or while a partition has none).
    private func committedPartitioned(_ name: String) async throws -> LogPosition? {
        if let handler = handlers[name], handler.options.partitions > 1 {
            return try await committedPosition(of: name, partitions: handler.options.partitions, in: checkpoints)
        }
        if let projection = projections[name], projection.options.partitions > 1 {
            return try await committedProjectionPosition(projection, version: try await projection.activeVersion())
        }
        return nil
    }

    /// Who owns each partition of every partitioned handler and projection, with its committed
    /// checkpoint and lag: read from the shared checkpoint store and election, so it shows
    /// every process's partitions, not only this one's.
    public func partitionStatus() async throws -> [PartitionStatus] {
        let head = try await store.headPosition()
        var rows: [PartitionStatus] = []
        func add(name: String, base: String, count: Int, checkpoints: any CheckpointStore, localKey: (Int) -> String)
            async throws
        {
            let ids = (0..<count).map { partitionSubscription(base, partition: $0, of: count) }
            let owners = try await leadership.owners(ids)
            for (p, id) in ids.enumerated() {
                let checkpoint = try await checkpoints.checkpoint(id)?.position
                let runner = state.withLock { $0.live[localKey(p)] }
                let isLocal = runner.map { $0.subscription == id && !$0.isStopping } ?? false
                rows.append(
                    PartitionStatus(
                        name: name, subscription: id, partition: p, count: count, owner: owners[id],
                        local: isLocal, checkpoint: checkpoint,
                        lagEvents: max(0, head.position - (checkpoint?.position ?? 0))))
            }
        }
        for (name, handler) in handlers.sorted(by: { $0.key < $1.key }) where handler.options.partitions > 1 {
            let count = handler.options.partitions
            try await add(name: name, base: name, count: count, checkpoints: checkpoints) {
                partitionSubscription(name, partition: $0, of: count)
            }
        }
        for (name, projection) in projections.sorted(by: { $0.key < $1.key }) where projection.options.partitions > 1 {
            let count = projection.options.partitions
            let base = projectionSubscription(name, version: try await projection.activeVersion())
            try await add(name: name, base: base, count: count, checkpoints: projection.checkpoints) {
                partitionSubscription(name, partition: $0, of: count)
            }
        }
        return rows
    }

    // MARK: Parked events

    private func parkedStore(for subscription: String) throws(PipelineError) -> any ParkedEventStore {
        if handler(forSubscription: subscription) != nil { return parkedEvents }
        if let (projection, _) = projection(forSubscription: subscription) {
            return projection.parkedEvents ?? parkedEvents
        }
        throw .unknownSubscription(subscription)
    }

    /// The handler of a subscription id: its name, or one of its partitions (`name#p/N`).
    private func handler(forSubscription subscription: String) -> (any EventHandler)? {
        if let handler = handlers[subscription] { return handler }
        guard let (base, _, count) = parsePartitionSubscription(subscription), let handler = handlers[base],
            handler.options.partitions == count
        else { return nil }
        return handler
    }

    private func projection(forSubscription id: String) -> (any Projection, Int)? {
        var subscription = id
        if let (base, _, count) = parsePartitionSubscription(id) {
            guard let at = base.lastIndex(of: "@"), projections[String(base[..<at])]?.options.partitions == count
            else { return nil }
            subscription = base
        }
        guard let at = subscription.lastIndex(of: "@"),
            subscription[subscription.index(after: at)...].hasPrefix("v"),
            let version = Int(subscription[subscription.index(at, offsetBy: 2)...]),
            let projection = projections[String(subscription[..<at])]
        else { return nil }
        return (projection, version)
    }

    /// Parked events of one subscription (all when nil), oldest first. Projections' subscriptions
    /// are named `projection@vN`.
    public func parkedEvents(subscription: String? = nil, limit: Int = 100) async throws -> [ParkedEvent] {
        if let subscription {
            return try await parkedStore(for: subscription).parkedEvents(subscription: subscription, limit: limit)
        }
        var stores: [any ParkedEventStore] = [parkedEvents]
        for p in projections.values { if let own = p.parkedEvents { stores.append(own) } }
        var all: [ParkedEvent] = []
        var seen = Set<String>()
        for s in stores {
            for e in try await s.parkedEvents(subscription: nil, limit: limit)
            where seen.insert("\(e.subscription)|\(e.event.logPosition)").inserted {
                all.append(e)
            }
        }
        return Array(all.sorted { $0.event.logPosition < $1.event.logPosition }.prefix(limit))
    }

    /// How long a replay's claim on a parked event keeps other replays away; after it, a replay
    /// interrupted by a crash can be taken over.
    static let replayClaimTimeout: TimeInterval = 60
    static let replayClaimPrefix = "replay in progress"

    /// Handles a parked event again (one attempt). On success it is removed; on failure it stays
    /// parked with the new error and attempt count, and the error is thrown.
    ///
    /// Exactly once under concurrency, across processes: the replay first claims the record
    /// (a compare-and-set on its attempt count), so of concurrent replays of one event only one
    /// handles it; a projection removes the record in the transaction of its writes. A replay that
    /// loses to another replay or to a discard throws ``PipelineError/parkedEventNotFound(subscription:position:)``
    /// and applied nothing; a failed replay records its error only if the event is still parked,
    /// so a discard is never undone.
    public func replayParked(subscription: String, position: LogPosition) async throws {
        let store = try parkedStore(for: subscription)
        let notFound = PipelineError.parkedEventNotFound(subscription: subscription, position: position)
        guard let parked = try await store.parkedEvent(subscription: subscription, position: position) else {
            throw notFound
        }
        if parked.error.hasPrefix(Self.replayClaimPrefix),
            Date().timeIntervalSince(parked.parkedAt) < Self.replayClaimTimeout
        {
            throw notFound
        }
        var claim = parked
        claim.attempts += 1
        claim.parkedAt = Date()
        claim.error = "\(Self.replayClaimPrefix); last error: \(parked.error)"
        guard try await store.update(claim, expectedAttempts: parked.attempts) else { throw notFound }
        do {
            if let handler = handler(forSubscription: subscription) {
                try await handler.handle(parked.event)
            } else if let (projection, version) = projection(forSubscription: subscription) {
                try await projection.apply(
                    [parked.event], version: version, commit: .replay(subscription: subscription, position: position))
            }
        } catch {
            if isNotParked(error) { throw notFound }
            var failed = claim
            failed.error = "\(error)"
            failed.parkedAt = Date()
            if try await store.update(failed, expectedAttempts: claim.attempts) {
                logger.error("replay of the parked event at \(position) for \(subscription) failed again: \(error)")
            } else {
                logger.error(
                    "replay of the parked event at \(position) for \(subscription) failed; it was discarded meanwhile: \(error)"
                )
            }
            throw error
        }
        // Projections with their own parked store removed the record with their writes; any other
        // record goes now (unless a discard took it meanwhile).
        if let current = try await store.parkedEvent(subscription: subscription, position: position),
            current.attempts == claim.attempts
        {
            try await store.remove(subscription: subscription, position: position)
        }
        logger.notice("replayed the parked event at \(position) for \(subscription)")
    }

    private func isNotParked(_ error: any Error) -> Bool {
        if case .parkedEventNotFound = error as? PipelineError { return true }
        return false
    }

    /// Removes a parked event without handling it.
    /// - Throws: ``PipelineError/parkedEventNotFound(subscription:position:)`` when it is not parked
    ///   (never was, or another call replayed or discarded it first).
    public func discardParked(subscription: String, position: LogPosition) async throws {
        let store = try parkedStore(for: subscription)
        guard try await store.remove(subscription: subscription, position: position) != nil else {
            throw PipelineError.parkedEventNotFound(subscription: subscription, position: position)
        }
        logger.notice("discarded the parked event at \(position) for \(subscription)")
    }

    // MARK: Rebuilds

    /// Rebuilds a projection without downtime: fills a new version of its tables from the origin
    /// while the current version keeps serving, switches readers when the new one has caught up,
    /// drops the old version, and moves the live subscription to the new version. Returns the new
    /// version. An interrupted rebuild resumes where it stopped.
    @discardableResult
    public func rebuild(projection name: String) async throws -> Int {
        guard let projection = projections[name] else { throw PipelineError.unknownSubscription(name) }
        let old = try await projection.activeVersion()
        let new = old + 1
        let subscription = projectionSubscription(name, version: new)
        try await projection.prepare(version: new)
        guard let token = try await acquire(subscription) else { throw CancellationError() }
        // The rebuild runs unpartitioned, in this process, under the lease of `name@vN`.
        var settings = RunSettings(projection.options)
        settings.watchLease = false
        let runner = SubscriptionRunner(
            subscription: subscription, name: name, consumer: .projection(projection, version: new),
            settings: settings, filter: projection.filter, store: store,
            checkpoints: projection.checkpoints, parked: projection.parkedEvents ?? parkedEvents,
            leadership: leadership, token: token, untilCaughtUp: true, logger: logger, onCommit: { _ in })
        state.withLock { $0.rebuilding[subscription] = runner }
        defer { _ = state.withLock { $0.rebuilding.removeValue(forKey: subscription) } }
        logger.notice("rebuilding projection \(name) into version \(new) while version \(old) serves")
        let outcome = await runner.run()
        await leadership.release(subscription, token: token)
        if let failure = outcome.failure {
            throw PipelineError.subscriptionStopped(
                subscription, position: runner.status.checkpoint ?? .start, error: failure)
        }
        if outcome == .stopped, stoppedBeforeCaughtUp(runner) {
            throw CancellationError()
        }
        let count = max(projection.options.partitions, 1)
        if count > 1, let checkpoint = runner.status.checkpoint {
            // The new version's partitions resume where the rebuild stopped (an interrupted
            // activation left some of them committed already: those stay).
            for p in 0..<count {
                let id = partitionSubscription(subscription, partition: p, of: count)
                if try await projection.checkpoints.checkpoint(id) == nil {
                    try await projection.checkpoints.commit(id, expected: nil, new: checkpoint, token: 0)
                }
            }
        }
        try await projection.activate(version: new, replacing: old)
        if count == 1, let checkpoint = runner.status.checkpoint { consistency.update(name, position: checkpoint) }
        let live = state.withLock { s -> [SubscriptionRunner] in
            let keys =
                count > 1 ? (0..<count).map { partitionSubscription(name, partition: $0, of: count) } : [name]
            let live = keys.compactMap { s.live[$0] }
            for r in live { s.superseded.insert(ObjectIdentifier(r)) }
            return live
        }
        for r in live { r.stop() }
        logger.notice("projection \(name) now serves version \(new); version \(old) was dropped")
        return new
    }

    private func stoppedBeforeCaughtUp(_ runner: SubscriptionRunner) -> Bool {
        let s = runner.status
        return (s.checkpoint ?? .start) < s.head
    }
}

/// Subscriptions did not reach a position in time.
public struct PipelineTimeout: Error, Sendable, Hashable, CustomStringConvertible {
    /// The position waited for.
    public var position: LogPosition
    /// The subscriptions still behind it.
    public var subscriptions: [String]
    /// How long it waited.
    public var timeout: Duration

    public var description: String {
        "subscriptions \(subscriptions.joined(separator: ", ")) had not processed position \(position) within \(timeout)"
    }
}
