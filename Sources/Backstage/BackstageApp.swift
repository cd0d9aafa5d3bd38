import Foundation
import Logging
import Metrics
import Tracing

/// Options of one dispatch.
public struct DispatchOptions: Sendable {
    /// The command's id. Leave nil for a new one; pass the id of an earlier attempt (an HTTP
    /// idempotency key, say) to make a retry return the original result instead of running again.
    public var commandID: UUID?
    /// The correlation id to carry on; defaults to the command id.
    public var correlationID: UUID?
    /// The message that caused this command, if any.
    public var causationID: UUID?
    /// Free-form fields stored in the metadata of every event the command produces.
    public var fields: [String: String]
    /// Whether dispatch waits for read models after storing the events (see ``Consistency``).
    public var consistency: Consistency = .eventual
    /// How long a dispatch waits for ``consistency`` before throwing ``ConsistencyError``.
    public var consistencyTimeout: Duration = .seconds(10)

    /// Creates options.
    public init(
        commandID: UUID? = nil, correlationID: UUID? = nil, causationID: UUID? = nil,
        fields: [String: String] = [:]
    ) {
        self.commandID = commandID
        self.correlationID = correlationID
        self.causationID = causationID
        self.fields = fields
    }
}

/// The outcome of a dispatch: the new events, the stream's new version, and the state.
public struct Dispatched<A: Aggregate>: Sendable {
    /// The command's id.
    public let commandID: UUID
    /// The aggregate instance's stream.
    public let stream: String
    /// The events the command produced (for a duplicate command: the events stored the first time).
    public let events: [A.Event]
    /// The stored form of ``events`` (positions, ids, metadata).
    public let recorded: [RecordedEvent]
    /// The stream version after the command.
    public let version: Int64
    /// The aggregate's state after the command.
    public let state: A
    /// True when the command id was already stored and nothing was written.
    public let isDuplicate: Bool
    /// How many version conflicts were retried.
    public let retries: Int
}

/// One event of an aggregate's history, stored and typed.
public struct HistoricalEvent<A: Aggregate>: Sendable {
    /// The stored event.
    public let recorded: RecordedEvent
    /// The typed event.
    public let event: A.Event
}

/// A loaded aggregate state and the stream version it includes.
public struct LoadedAggregate<A: Aggregate>: Sendable {
    /// The state.
    public let state: A
    /// The number of events applied.
    public let version: Int64
}

/// Runs commands against aggregates stored in an ``EventStore``.
///
/// Commands for one aggregate instance run one at a time; different instances run in parallel.
/// Hydrated aggregates stay in a bounded cache and only read the events appended after their
/// version; when another process wrote first, the command is retried on the fresh state a
/// bounded number of times, then the conflict is surfaced.
public final class BackstageApp: Sendable {
    /// Settings of the aggregate runtime.
    public struct Configuration: Sendable {
        /// Most hydrated aggregates kept in memory (0 disables the cache).
        public var cacheCapacity: Int = 10_000
        /// A cached aggregate unused for this long is dropped.
        public var cacheIdleTimeout: Duration = .seconds(600)
        /// How often a command is retried after a version conflict before the conflict is surfaced.
        public var maxConflictRetries: Int = 3
        /// Take a snapshot every N events of every aggregate whose state is `Codable` (nil: never).
        public var snapshotEvery: Int? = nil
        /// Per-category snapshot intervals; they win over ``snapshotEvery``.
        public var snapshotIntervals: [String: Int] = [:]
        /// Events read per page when an aggregate is loaded.
        public var loadPageSize: Int = 1_000
        /// Where the runtime logs.
        public var logger = Logger(label: "backstage")

        /// The defaults.
        public init() {}
    }

    /// The store events go to.
    public let store: any EventStore
    /// The router.
    public let router: Router
    /// The runtime settings.
    public let configuration: Configuration
    /// The projections `.strong` and `.projections([...])` dispatches wait for, and how far each
    /// has committed (registered by a ``PipelineService`` created with the app, or with
    /// ``ConsistencyRegistry/register(_:)``).
    public let consistency = ConsistencyRegistry()
    let middleware: [any Middleware]
    let cache: AggregateCache
    let metrics: DispatchMetrics

    /// Creates an application.
    public init(
        store: any EventStore, router: Router, middleware: [any Middleware] = [ValidationMiddleware()],
        configuration: Configuration = Configuration()
    ) {
        self.store = store
        self.router = router
        self.middleware = middleware
        self.configuration = configuration
        self.cache = AggregateCache(
            capacity: configuration.cacheCapacity, idleTimeout: configuration.cacheIdleTimeout)
        self.metrics = DispatchMetrics()
    }

    /// Dispatches `command` to its aggregate and returns what happened.
    ///
    /// - Throws: the aggregate's `Rejection` when a business rule rejects the command, the error
    ///   of a middleware that rejected it, ``RoutingError/noRoute(command:)``,
    ///   ``EventStoreError/wrongExpectedVersion(stream:expected:actual:)`` when conflicts persist
    ///   after the retries, or any store error.
    @discardableResult
    public func dispatch<C: Command>(_ command: C, options: DispatchOptions = DispatchOptions())
        async throws -> Dispatched<C.Target>
    {
        let start = ContinuousClock.now
        let route = try router.route(for: C.self)
        let stream = C.Target.streamID(route.id(command))
        let commandID = options.commandID ?? UUIDv7.next()
        var context = CommandContext(
            command: command, commandName: route.name, commandID: commandID, stream: stream,
            correlationID: options.correlationID ?? commandID, causationID: options.causationID,
            fields: options.fields)
        let dispatched: Dispatched<C.Target>
        do {
            try store.limits.validate(stream: stream)
            for m in middleware { try await m.beforeDispatch(&context) }
            let result = try await withSpan(route.spanName) { span in
                if span.isRecording {
                    span.attributes["backstage.stream"] = stream
                    span.attributes["backstage.command_id"] = "\(commandID)"
                }
                return try await execute(command, route: route, context: context, explicitID: options.commandID != nil)
            }
            let summary = DispatchSummary(
                eventCount: result.isDuplicate ? 0 : result.recorded.count, version: result.version,
                isDuplicate: result.isDuplicate, retries: result.retries)
            for m in middleware { await m.afterDispatch(context, result: summary) }
            metrics.succeeded(command: route.name, events: summary.eventCount, retries: result.retries, since: start)
            dispatched = result
        } catch {
            for m in middleware { await m.afterFailure(context, error: error) }
            metrics.failed(command: route.name, error: error)
            throw error
        }
        // The events are stored; a consistency timeout says so.
        try await awaitConsistency(options, recorded: dispatched.recorded)
        return dispatched
    }

    private func execute<C: Command>(
        _ command: C, route: Route<C>, context: CommandContext, explicitID: Bool
    ) async throws -> Dispatched<C.Target> {
        typealias A = C.Target
        let stream = context.stream
        let entry = cache.acquire(stream, as: A.self)
        await entry.lock.lock()
        defer {
            entry.lock.unlock()
            cache.release(stream, entry)
        }
        if !entry.loaded { try await load(entry, stream: stream, codec: route.aggregate.codec) }
        if explicitID, let prior = try await store.appendResult(forCommand: context.commandID) {
            return try await duplicate(prior, entry: entry, context: context, codec: route.aggregate.codec)
        }
        let metadata = EventMetadata(
            commandID: context.commandID, causationID: context.commandID,
            correlationID: context.correlationID, fields: context.fields)
        var retries = 0
        while true {
            let decided = try route.decide(entry.state, command)
            if decided.isEmpty {
                return Dispatched(
                    commandID: context.commandID, stream: stream, events: [], recorded: [],
                    version: entry.version, state: entry.state, isDuplicate: false, retries: retries)
            }
            let data = try decided.map { try route.aggregate.codec.encode($0, metadata: metadata) }
            let result: AppendResult
            do {
                result = try await store.append(
                    data, to: stream, expected: .exact(entry.version), commandID: context.commandID)
            } catch EventStoreError.wrongExpectedVersion(let s, let expected, let actual) {
                guard retries < configuration.maxConflictRetries else {
                    // The cached state is behind the store: reload it on the next command, or
                    // every later command for this aggregate would conflict again.
                    entry.loaded = false
                    throw EventStoreError.wrongExpectedVersion(stream: s, expected: expected, actual: actual)
                }
                retries += 1
                metrics.conflict(command: route.name)
                try await catchUp(entry, stream: stream, codec: route.aggregate.codec)
                continue
            }
            if result.isDuplicate {
                // Another process stored this command id while we decided: report its result.
                try await catchUp(entry, stream: stream, codec: route.aggregate.codec)
                return try await duplicate(result, entry: entry, context: context, codec: route.aggregate.codec)
            }
            for event in decided { entry.state.apply(event) }
            entry.version = result.lastVersion
            let now = Date()
            var recorded = zip(data, result.firstVersion...).enumerated().map { i, pair in
                RecordedEvent(
                    position: result.firstPosition + Int64(i), transaction: result.transaction,
                    stream: stream, streamVersion: pair.1, id: pair.0.id, type: pair.0.type,
                    schemaVersion: pair.0.schemaVersion, data: pair.0.data, metadata: pair.0.metadata,
                    recordedAt: now)
            }
            if result.lastPosition - result.firstPosition + 1 != Int64(data.count) {
                // The positions of one append can have gaps (PostgreSQL: concurrent transactions
                // share the sequence), so read the stored events back instead of guessing.
                if let stored = try? await store.readStream(
                    stream, from: result.firstVersion, direction: .forward, limit: data.count),
                    stored.map(\.id) == data.map(\.id)
                {
                    recorded = stored
                } else {
                    recorded[recorded.count - 1].position = result.lastPosition
                }
            }
            await snapshotIfDue(entry, stream: stream)
            return Dispatched(
                commandID: context.commandID, stream: stream, events: decided, recorded: recorded,
                version: entry.version, state: entry.state, isDuplicate: false, retries: retries)
        }
    }

    private func duplicate<A: Aggregate>(
        _ prior: AppendResult, entry: AggregateEntry<A>, context: CommandContext, codec: EventCodec<A.Event>
    ) async throws -> Dispatched<A> {
        let count = Int(prior.lastVersion - prior.firstVersion + 1)
        let recorded = try await store.readStream(
            prior.stream, from: prior.firstVersion, direction: .forward, limit: count)
        return Dispatched(
            commandID: context.commandID, stream: prior.stream,
            events: try recorded.map { try codec.decode($0) }, recorded: recorded,
            version: prior.lastVersion, state: entry.state, isDuplicate: true, retries: 0)
    }

    // MARK: Loading

    private func snapshotInterval(_ category: String) -> Int? {
        configuration.snapshotIntervals[category] ?? configuration.snapshotEvery
    }

    private func load<A: Aggregate>(_ entry: AggregateEntry<A>, stream: String, codec: EventCodec<A.Event>)
        async throws
    {
        entry.state = A()
        entry.version = 0
        if snapshotInterval(A.category) != nil, let decodable = A.self as? any Decodable.Type,
            let snapshot = try await store.loadSnapshot(stream, schemaVersion: A.snapshotSchemaVersion)
        {
            do {
                if let state = try JSONDecoder().decode(decodable, from: snapshot.data) as? A {
                    entry.state = state
                    entry.version = snapshot.version
                    entry.lastSnapshotVersion = snapshot.version
                }
            } catch {
                configuration.logger.warning(
                    "ignoring snapshot of \(stream) at version \(snapshot.version) that does not decode: \(error)")
            }
        }
        try await catchUp(entry, stream: stream, codec: codec)
        entry.loaded = true
    }

    private func catchUp<A: Aggregate>(_ entry: AggregateEntry<A>, stream: String, codec: EventCodec<A.Event>)
        async throws
    {
        while true {
            let page = try await store.readStream(
                stream, from: entry.version + 1, direction: .forward, limit: configuration.loadPageSize)
            for recorded in page {
                entry.state.apply(try codec.decode(recorded))
                entry.version = recorded.streamVersion
            }
            if page.count < configuration.loadPageSize { return }
        }
    }

    private func snapshotIfDue<A: Aggregate>(_ entry: AggregateEntry<A>, stream: String) async {
        guard let every = snapshotInterval(A.category), every > 0,
            entry.version / Int64(every) > entry.lastSnapshotVersion / Int64(every),
            let encodable = entry.state as? any Encodable
        else { return }
        do {
            let data = try JSONEncoder().encode(encodable)
            try await store.saveSnapshot(
                Snapshot(stream: stream, version: entry.version, schemaVersion: A.snapshotSchemaVersion, data: data))
            entry.lastSnapshotVersion = entry.version
        } catch {
            // A snapshot is an optimisation: the events are stored, so the command succeeded.
            configuration.logger.warning("snapshot of \(stream) at version \(entry.version) failed: \(error)")
        }
    }

    // MARK: Reading aggregates

    /// The current state of the instance `id` of `type`, read from the store (not the cache).
    public func load<A: Aggregate>(_ type: A.Type, id: String) async throws -> LoadedAggregate<A> {
        try await load(type, id: id) { _ in true }
    }

    /// The state of the instance `id` as it was after stream version `version`: any page of the script.
    public func load<A: Aggregate>(_ type: A.Type, id: String, atVersion version: Int64) async throws
        -> LoadedAggregate<A>
    {
        try await load(type, id: id) { $0.streamVersion <= version }
    }

    /// The state of the instance `id` as it was at `date` (events recorded at or before it).
    public func load<A: Aggregate>(_ type: A.Type, id: String, at date: Date) async throws -> LoadedAggregate<A> {
        try await load(type, id: id) { $0.recordedAt <= date }
    }

    private func load<A: Aggregate>(
        _ type: A.Type, id: String, while include: (RecordedEvent) -> Bool
    ) async throws -> LoadedAggregate<A> {
        var state = A()
        var version: Int64 = 0
        for entry in try await history(type, id: id) {
            guard include(entry.recorded) else { break }
            state.apply(entry.event)
            version = entry.recorded.streamVersion
        }
        return LoadedAggregate(state: state, version: version)
    }

    /// Every event of the instance `id`, in order, stored and typed.
    public func history<A: Aggregate>(_ type: A.Type, id: String) async throws -> [HistoricalEvent<A>] {
        let codec = try router.aggregate(A.self).codec
        let stream = A.streamID(id)
        var result: [HistoricalEvent<A>] = []
        while true {
            let page = try await store.readStream(
                stream, from: Int64(result.count) + 1, direction: .forward, limit: configuration.loadPageSize)
            for recorded in page { result.append(HistoricalEvent(recorded: recorded, event: try codec.decode(recorded))) }
            if page.count < configuration.loadPageSize { return result }
        }
    }

    /// The number of hydrated aggregates in the cache.
    public var cachedAggregateCount: Int { cache.count }
}

/// Metrics of the aggregate runtime (swift-metrics): dispatches, failures, latency, events, retries.
struct DispatchMetrics: Sendable {
    let dispatched = Counter(label: "backstage_commands_dispatched_total")
    let failures = Counter(label: "backstage_commands_failed_total")
    let appended = Counter(label: "backstage_events_appended_total")
    let retries = Counter(label: "backstage_command_conflict_retries_total")
    let latency = Metrics.Timer(label: "backstage_command_duration_seconds")

    func succeeded(command: String, events: Int, retries: Int, since start: ContinuousClock.Instant) {
        dispatched.increment()
        if events > 0 { appended.increment(by: events) }
        latency.recordInterval(since: start)
    }
    func failed(command: String, error: any Error) { failures.increment() }
    func conflict(command: String) { retries.increment() }
}

extension Metrics.Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let d = ContinuousClock.now - start
        recordNanoseconds(d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
    }
}
