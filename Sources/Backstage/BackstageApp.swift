import Foundation
import Logging
import Metrics
import Tracing

/// Options of one dispatch.
public struct DispatchOptions: Sendable {
    /// The command's id. Leave nil for a new one; pass the id of an earlier attempt (an HTTP
    /// idempotency key, say) to make a retry return the original result instead of running again.
    ///
    /// An explicit id is bound to its command: the events store a fingerprint of the command
    /// (its name and its sorted-keys JSON when it is `Encodable`, else its `String(reflecting:)`)
    /// in the metadata field ``commandFingerprintField``. The same id with another command, or
    /// for another aggregate, throws ``EventStoreError/idempotencyConflict(commandID:stream:)``.
    public var commandID: UUID?
    /// The correlation id to carry on; defaults to the command id.
    public var correlationID: UUID?
    /// The message that caused this command, if any: stored in the metadata of every event the
    /// command produces, under ``commandCausationField`` (each event's own causation id is the command).
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

/// The events of one aggregate instance, stored and typed, read in pages as an `AsyncSequence`
/// (made by ``BackstageApp/streamHistory(_:id:from:through:)``).
///
/// Each `next()` decodes one event with the aggregate's codec and throws its error when it does
/// not decode; the store's errors are thrown; when the iterating task is cancelled, `next()`
/// throws `CancellationError`.
public struct AggregateHistory<A: Aggregate>: AsyncSequence, Sendable {
    public typealias Element = HistoricalEvent<A>

    let events: StreamEvents
    let codec: EventCodec<A.Event>

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(events: events.makeAsyncIterator(), codec: codec)
    }

    /// Reads and decodes for ``AggregateHistory``.
    public struct AsyncIterator: AsyncIteratorProtocol, Sendable {
        var events: StreamEvents.AsyncIterator
        let codec: EventCodec<A.Event>

        /// The next event; nil at the end of the stream.
        public mutating func next() async throws -> HistoricalEvent<A>? {
            guard let recorded = try await events.next() else { return nil }
            return HistoricalEvent(recorded: recorded, event: try codec.decode(recorded))
        }
    }
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
        /// Whether a ``ValidatableCommand`` is validated before any middleware runs (on by
        /// default, whatever middleware the app is given).
        public var validatesCommands = true
        /// A cached aggregate unused for this long is dropped.
        public var cacheIdleTimeout: Duration = .seconds(600)
        /// How often a command is retried after a version conflict before the conflict is surfaced.
        ///
        /// Every conflict means another writer appended to the aggregate first, so a hot
        /// aggregate with N competing processes needs about N retries in the worst case.
        /// A command is first decided without reading the store (on the cached state, or on the
        /// empty state for an aggregate that is not cached); when the store reports that state
        /// behind, the aggregate is read and the command decided again once, which is not a retry.
        public var maxConflictRetries: Int = 16
        /// The wait before the first retry of a conflicted command; each further retry doubles
        /// it up to ``maxConflictBackoff``. The actual wait is between half of it and all of it
        /// (jitter), so competing processes stop colliding. Zero retries at once.
        public var conflictBackoff: Duration = .milliseconds(2)
        /// The longest wait between two retries of a conflicted command.
        public var maxConflictBackoff: Duration = .milliseconds(100)
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
    /// The application's middleware, without ``ValidationMiddleware``: validation runs inline
    /// (``validatesCommands``), before them.
    let middleware: [any Middleware]
    /// Whether commands are validated (``Configuration/validatesCommands``).
    let validatesCommands: Bool
    let cache: AggregateCache
    let metrics: DispatchMetrics

    /// Creates an application. `middleware` runs in order around every dispatch, after command
    /// validation (``ValidationMiddleware``), which runs first unless
    /// ``Configuration/validatesCommands`` is off.
    public init(
        store: any EventStore, router: Router, middleware: [any Middleware] = [],
        configuration: Configuration = Configuration()
    ) {
        self.store = store
        self.router = router
        // `ValidationMiddleware` does nothing after a dispatch: running its check inline spares
        // every dispatch the asynchronous calls of a middleware.
        self.validatesCommands = configuration.validatesCommands
        self.middleware = middleware.filter { !($0 is ValidationMiddleware) }
        self.configuration = configuration
        self.cache = AggregateCache(
            capacity: configuration.cacheCapacity, idleTimeout: configuration.cacheIdleTimeout)
        self.metrics = DispatchMetrics(routes: router.routes)
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
        let commandMetrics = metrics.command(C.self)
        let start = commandMetrics == nil ? nil : ContinuousClock.now
        let route = try router.route(for: C.self)
        let stream = C.Target.streamID(route.id(command))
        let commandID = options.commandID ?? UUIDv7.next()
        var context = CommandContext(
            command: command, commandName: route.name, commandID: commandID, stream: stream,
            correlationID: options.correlationID ?? commandID, causationID: options.causationID,
            fields: options.fields)
        let dispatched: Dispatched<C.Target>
        // Spans only when a tracer is bootstrapped (or bound with `withTracer`): the default
        // no-op tracer costs this one check per dispatch.
        let traced = isTracing()
        do {
            try store.limits.validate(stream: stream)
            if validatesCommands, route.mayValidate, let command = command as? any ValidatableCommand {
                try command.validate()
            }
            for m in middleware { try await m.beforeDispatch(&context) }
            let result: Dispatched<C.Target>
            if traced {
                let context = context
                result = try await withSpan(route.spanName) { span in
                    if span.isRecording {
                        span.attributes["backstage.command"] = route.name
                        span.attributes["backstage.category"] = route.category
                        span.attributes["backstage.stream"] = stream
                        span.attributes["backstage.command_id"] = "\(commandID)"
                    }
                    let result = try await execute(
                        command, route: route, context: context, explicitID: options.commandID != nil, traced: true)
                    if span.isRecording {
                        span.attributes["backstage.events"] = result.isDuplicate ? 0 : result.recorded.count
                        span.attributes["backstage.version"] = result.version
                        span.attributes["backstage.retries"] = result.retries
                        span.attributes["backstage.duplicate"] = result.isDuplicate
                    }
                    return result
                }
            } else {
                result = try await execute(
                    command, route: route, context: context, explicitID: options.commandID != nil, traced: false)
            }
            let summary = DispatchSummary(
                eventCount: result.isDuplicate ? 0 : result.recorded.count, version: result.version,
                isDuplicate: result.isDuplicate, retries: result.retries)
            for m in middleware { await m.afterDispatch(context, result: summary) }
            if let commandMetrics, let start { commandMetrics.succeeded(events: summary.eventCount, since: start) }
            dispatched = result
        } catch {
            for m in middleware { await m.afterFailure(context, error: error) }
            if let commandMetrics, let start {
                commandMetrics.failed(rejected: error is C.Target.Rejection, since: start)
            }
            throw error
        }
        // The events are stored; a consistency timeout says so.
        if options.consistency != .eventual { try await awaitConsistency(options, recorded: dispatched.recorded) }
        return dispatched
    }

    /// Dispatches `command` and returns the aggregate's decision typed: the outcome, or the
    /// aggregate's `Rejection` when a business rule rejected the command.
    ///
    /// ```swift
    /// switch try await app.attempt(SellTicket(showID: "s1", buyer: "ada")) {
    /// case .success(let sold): print("sold at version \(sold.version)")
    /// case .failure(.soldOut): print("sold out")
    /// case .failure(let rejection): print("rejected: \(rejection)")
    /// }
    /// ```
    ///
    /// - Throws: every other error of ``dispatch(_:options:)``: a middleware's rejection,
    ///   routing and store errors, a persisting version conflict, a consistency timeout,
    ///   `CancellationError`.
    public func attempt<C: Command>(_ command: C, options: DispatchOptions = DispatchOptions())
        async throws -> Result<Dispatched<C.Target>, C.Target.Rejection>
    {
        do {
            return .success(try await dispatch(command, options: options))
        } catch let rejection as C.Target.Rejection {
            return .failure(rejection)
        }
    }

    private func execute<C: Command>(
        _ command: C, route: Route<C>, context: CommandContext, explicitID: Bool, traced: Bool
    ) async throws -> Dispatched<C.Target> {
        typealias A = C.Target
        let stream = context.stream
        let codec = route.aggregate.codec
        // Held at once unless another command for this aggregate holds it: then wait for it
        // (without an asynchronous call in the common case).
        var held = false
        let entry = cache.enter(stream, as: A.self, held: &held)
        if !held { await cache.wait(for: entry) }
        defer { cache.release(entry) }
        // The outcome of a command always rests on the state committed before it started, without
        // a read in the common case: the command is first decided on the cached state (or, for an
        // aggregate that is not cached, on the empty state: it is taken to be new) and appended
        // expecting that state's version, which the store checks. Only when the store says the
        // stream moved on (a conflict), or when that state rejects the command or decides
        // nothing, is the aggregate read (a cached one reads only the events after its
        // version) and the command decided again. That first conflict is no retry: nothing was
        // contended, the cache was behind (another process wrote) or the aggregate was not new.
        var unverified = true
        if !entry.loaded {
            entry.state = C.Target()
            entry.version = 0
        }
        var fields = context.fields
        if traced {
            // The dispatch span's trace context (W3C `traceparent`/`tracestate` with a W3C
            // propagator) travels in the events' metadata to every handler and projection.
            InstrumentationSystem.instrument.inject(
                ServiceContext.current ?? .topLevel, into: &fields, using: MetadataFieldsInjector())
        }
        // What caused the command (an event, a message) is recorded with its events; the
        // events' own causation id is the command.
        if let causation = context.causationID { fields[commandCausationField] = causation.uuidString.lowercased() }
        var fingerprint: String? = nil
        if explicitID {
            let print = commandFingerprint(command, name: route.name)
            fingerprint = print
            fields[commandFingerprintField] = print
            if let prior = try await store.appendResult(forCommand: context.commandID) {
                return try await duplicate(prior, entry: entry, context: context, fingerprint: print, codec: codec)
            }
        }
        let metadata = EventMetadata(
            commandID: context.commandID, causationID: context.commandID,
            correlationID: context.correlationID, fields: fields)
        var retries = 0
        while true {
            let decided: [A.Event]
            do {
                decided =
                    traced
                    ? try withSpan(route.decideSpanName) { _ in try route.decide(entry.state, command) }
                    : try route.decide(entry.state, command)
            } catch  where unverified {
                unverified = false
                try await refresh(entry, stream: stream, codec: codec)
                continue
            }
            if decided.isEmpty, unverified {
                unverified = false
                try await refresh(entry, stream: stream, codec: codec)
                continue
            }
            if decided.isEmpty {
                return Dispatched(
                    commandID: context.commandID, stream: stream, events: [], recorded: [],
                    version: entry.version, state: entry.state, isDuplicate: false, retries: retries)
            }
            let data = try decided.map { try codec.encode($0, metadata: metadata) }
            let result: AppendResult
            do {
                // Only an explicit command id goes to the store's idempotency check: a generated
                // one is new by construction (no caller can send it again), so storing it for
                // lookups would cost a row and a fingerprint per append for nothing. The events
                // carry it in their metadata either way.
                let storedID = explicitID ? context.commandID : nil
                if traced {
                    let version = entry.version
                    result = try await withSpan(route.appendSpanName) { span in
                        if span.isRecording {
                            span.attributes["backstage.stream"] = stream
                            span.attributes["backstage.events"] = data.count
                            span.attributes["backstage.expected_version"] = version
                        }
                        return try await store.append(data, to: stream, expected: .exact(version), commandID: storedID)
                    }
                } else {
                    result = try await store.append(
                        data, to: stream, expected: .exact(entry.version), commandID: storedID)
                }
            } catch EventStoreError.wrongExpectedVersion where unverified {
                // The stream is ahead of the state decided on: read it and decide again.
                unverified = false
                try await refresh(entry, stream: stream, codec: codec)
                continue
            } catch EventStoreError.wrongExpectedVersion(let s, let expected, let actual) {
                guard retries < configuration.maxConflictRetries else {
                    // The cached state is behind the store: reload it on the next command, or
                    // every later command for this aggregate would conflict again.
                    entry.loaded = false
                    throw EventStoreError.wrongExpectedVersion(stream: s, expected: expected, actual: actual)
                }
                retries += 1
                metrics.command(C.self)?.conflicts.increment()
                try await Task.sleep(for: conflictDelay(afterAttempt: retries))
                try await refresh(entry, stream: stream, codec: codec)
                continue
            }
            if result.isDuplicate {
                // Another process stored this command id while we decided: report its result.
                try await refresh(entry, stream: stream, codec: codec)
                return try await duplicate(
                    result, entry: entry, context: context, fingerprint: fingerprint, codec: codec)
            }
            for event in decided { entry.state.apply(event) }
            entry.version = result.lastVersion
            entry.loaded = true
            let recorded: [RecordedEvent]
            if let recordedAt = result.recordedAt, result.lastPosition - result.firstPosition + 1 == Int64(data.count) {
                recorded = local(data, stream: stream, result: result, recordedAt: recordedAt)
            } else {
                recorded = try await recordedEvents(data, stream: stream, result: result)
            }
            if snapshotInterval(A.category) != nil { await snapshotIfDue(entry, stream: stream) }
            return Dispatched(
                commandID: context.commandID, stream: stream, events: decided, recorded: recorded,
                version: entry.version, state: entry.state, isDuplicate: false, retries: retries)
        }
    }

    /// The stored form of the events just appended: built from the result when the store reports
    /// the stored time and contiguous positions, read back otherwise.
    private func recordedEvents(_ data: [EventData], stream: String, result: AppendResult) async throws
        -> [RecordedEvent]
    {
        let contiguous = result.lastPosition - result.firstPosition + 1 == Int64(data.count)
        if let recordedAt = result.recordedAt, contiguous {
            return local(data, stream: stream, result: result, recordedAt: recordedAt)
        }
        // The positions of one append can have gaps (PostgreSQL: concurrent transactions share
        // the sequence), and the stored time may be unknown: read the stored events back.
        if let stored = try? await store.readStream(
            stream, from: result.firstVersion, direction: .forward, limit: data.count),
            stored.map(\.id) == data.map(\.id)
        {
            return stored
        }
        // The events are stored, so the command succeeded: report what is known.
        var recorded = local(data, stream: stream, result: result, recordedAt: result.recordedAt ?? Date())
        recorded[recorded.count - 1].position = result.lastPosition
        return recorded
    }

    private func local(_ data: [EventData], stream: String, result: AppendResult, recordedAt: Date)
        -> [RecordedEvent]
    {
        zip(data, result.firstVersion...).enumerated().map { i, pair in
            RecordedEvent(
                position: result.firstPosition + Int64(i), transaction: result.transaction,
                stream: stream, streamVersion: pair.1, id: pair.0.id, type: pair.0.type,
                schemaVersion: pair.0.schemaVersion, data: pair.0.data, metadata: pair.0.metadata,
                recordedAt: recordedAt)
        }
    }

    /// Exponential backoff with jitter before retrying a conflicted command: half the step plus
    /// a random part of the other half, the step doubling from ``Configuration/conflictBackoff``
    /// up to ``Configuration/maxConflictBackoff``.
    private func conflictDelay(afterAttempt attempt: Int) -> Duration {
        let base = configuration.conflictBackoff
        let cap = configuration.maxConflictBackoff
        guard base > .zero, cap > .zero else { return .zero }
        var step = base
        for _ in 1..<max(attempt, 1) where step < cap { step *= 2 }
        if step > cap { step = cap }
        let half = step / 2
        return half + half * Double.random(in: 0...1)
    }

    /// A command id that is already stored: the original result when it belongs to this stream
    /// and this command, an idempotency conflict otherwise.
    private func duplicate<A: Aggregate>(
        _ prior: AppendResult, entry: AggregateEntry<A>, context: CommandContext, fingerprint: String?,
        codec: EventCodec<A.Event>
    ) async throws -> Dispatched<A> {
        guard prior.stream.utf8.elementsEqual(context.stream.utf8) else {
            throw EventStoreError.idempotencyConflict(commandID: context.commandID, stream: prior.stream)
        }
        let count = Int(prior.lastVersion - prior.firstVersion + 1)
        let recorded = try await store.readStream(
            prior.stream, from: prior.firstVersion, direction: .forward, limit: count)
        if let fingerprint, let stored = recorded.first?.metadata.fields[commandFingerprintField],
            stored != fingerprint
        {
            throw EventStoreError.idempotencyConflict(commandID: context.commandID, stream: prior.stream)
        }
        // The state after the original command, not after whatever came later.
        let state: A
        if entry.version == prior.lastVersion {
            state = entry.state
        } else {
            var replayed = A()
            var next: Int64 = 1
            while next <= prior.lastVersion {
                let limit = Int(min(Int64(configuration.loadPageSize), prior.lastVersion - next + 1))
                let page = try await store.readStream(prior.stream, from: next, direction: .forward, limit: limit)
                if page.isEmpty { break }
                for event in page { replayed.apply(try codec.decode(event)) }
                next += Int64(page.count)
            }
            state = replayed
        }
        return Dispatched(
            commandID: context.commandID, stream: prior.stream,
            events: try recorded.map { try codec.decode($0) }, recorded: recorded,
            version: prior.lastVersion, state: state, isDuplicate: true, retries: 0)
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

    /// Brings the entry up to the stored stream: a cached aggregate reads the events after its
    /// version, one that is not cached loads.
    private func refresh<A: Aggregate>(_ entry: AggregateEntry<A>, stream: String, codec: EventCodec<A.Event>)
        async throws
    {
        if entry.loaded {
            try await catchUp(entry, stream: stream, codec: codec)
        } else {
            try await load(entry, stream: stream, codec: codec)
        }
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
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            let data = try encoder.encode(encodable)
            try await store.saveSnapshot(
                Snapshot(stream: stream, version: entry.version, schemaVersion: A.snapshotSchemaVersion, data: data))
            entry.lastSnapshotVersion = entry.version
        } catch {
            // A snapshot is an optimisation: the events are stored, so the command succeeded.
            configuration.logger.warning("snapshot of \(stream) at version \(entry.version) failed: \(error)")
        }
    }

    // MARK: Reading aggregates

    /// The current state of the instance `id` of `type`, read from the store (not the cache),
    /// from its snapshot when one is stored (and snapshots are configured for its category).
    public func load<A: Aggregate>(_ type: A.Type, id: String) async throws -> LoadedAggregate<A> {
        let start = await snapshotState(A.self, stream: A.streamID(id)) { _ in true }
        return try await replay(
            A.self, id: id, from: start, events: streamHistory(A.self, id: id, from: start.version + 1)
        ) { _ in true }
    }

    /// The state of the instance `id` as it was after stream version `version`: any page of the script.
    ///
    /// Starts from the aggregate's snapshot when one is stored at or below `version` (and
    /// snapshots are configured for its category), then streams the events after it in pages.
    public func load<A: Aggregate>(_ type: A.Type, id: String, atVersion version: Int64) async throws
        -> LoadedAggregate<A>
    {
        let stream = A.streamID(id)
        let start = await snapshotState(A.self, stream: stream) { snapshot in snapshot.version <= version }
        return try await replay(
            A.self, id: id, from: start,
            events: streamHistory(A.self, id: id, from: start.version + 1, through: version)
        ) { _ in true }
    }

    /// The state of the instance `id` as it was at `date` (events recorded at or before it).
    ///
    /// Starts from the aggregate's snapshot when it was taken at or before `date` and the last
    /// event it includes was recorded at or before `date` (stored times of one stream are taken
    /// to ascend, as they do on every store with a sane clock), then streams the later events.
    public func load<A: Aggregate>(_ type: A.Type, id: String, at date: Date) async throws -> LoadedAggregate<A> {
        let stream = A.streamID(id)
        var start = await snapshotState(A.self, stream: stream) { snapshot in snapshot.recordedAt <= date }
        if start.version > 0 {
            let last = try await store.readStream(stream, from: start.version, direction: .forward, limit: 1)
            if last.first?.streamVersion != start.version || last[0].recordedAt > date {
                start = LoadedAggregate(state: A(), version: 0)
            }
        }
        return try await replay(
            A.self, id: id, from: start, events: streamHistory(A.self, id: id, from: start.version + 1)
        ) { $0.recordedAt <= date }
    }

    /// Applies the events of `events` to `start` while `include` accepts them.
    private func replay<A: Aggregate>(
        _ type: A.Type, id: String, from start: LoadedAggregate<A>, events: AggregateHistory<A>,
        while include: (RecordedEvent) -> Bool
    ) async throws -> LoadedAggregate<A> {
        var state = start.state
        var version = start.version
        for try await entry in events {
            guard include(entry.recorded) else { break }
            state.apply(entry.event)
            version = entry.recorded.streamVersion
        }
        return LoadedAggregate(state: state, version: version)
    }

    /// The state in the stored snapshot of `stream` when snapshots are configured for `A`'s
    /// category, `A` is `Decodable` and `usable` accepts the snapshot; the empty state otherwise.
    private func snapshotState<A: Aggregate>(
        _ type: A.Type, stream: String, usable: (Snapshot) -> Bool
    ) async -> LoadedAggregate<A> {
        let empty = LoadedAggregate(state: A(), version: 0)
        guard snapshotInterval(A.category) != nil, let decodable = A.self as? any Decodable.Type else { return empty }
        do {
            guard let snapshot = try await store.loadSnapshot(stream, schemaVersion: A.snapshotSchemaVersion),
                usable(snapshot), snapshot.version > 0,
                let state = try JSONDecoder().decode(decodable, from: snapshot.data) as? A
            else { return empty }
            return LoadedAggregate(state: state, version: snapshot.version)
        } catch {
            // A snapshot is an optimisation: replay from the start instead.
            configuration.logger.warning("ignoring snapshot of \(stream) that does not load: \(error)")
            return empty
        }
    }

    /// Every event of the instance `id`, in order, stored and typed (collected from
    /// ``streamHistory(_:id:from:through:)``).
    public func history<A: Aggregate>(_ type: A.Type, id: String) async throws -> [HistoricalEvent<A>] {
        var result: [HistoricalEvent<A>] = []
        for try await entry in try streamHistory(type, id: id) { result.append(entry) }
        return result
    }

    /// The events of the instance `id` from stream version `version` through `last` (default:
    /// the end), stored and typed, as an `AsyncSequence` read in pages of
    /// ``Configuration/loadPageSize``. See ``AggregateHistory``.
    ///
    /// - Throws: ``RoutingError`` when `A` is not routed.
    public func streamHistory<A: Aggregate>(
        _ type: A.Type, id: String, from version: Int64 = 1, through last: Int64? = nil
    ) throws -> AggregateHistory<A> {
        let codec = try router.aggregate(A.self).codec
        return AggregateHistory(
            events: store.events(
                inStream: A.streamID(id), from: version, through: last, pageSize: configuration.loadPageSize),
            codec: codec)
    }

    /// The number of hydrated aggregates in the cache.
    public var cachedAggregateCount: Int { cache.count }
}

/// The metadata field where a dispatch with an explicit command id stores the command's
/// fingerprint, so a reuse of the id for a different command is recognised by any process.
/// Reserved: a value set by a caller under this key is replaced.
public let commandFingerprintField = "backstage.command"

/// The metadata field where a dispatch stores its ``DispatchOptions/causationID`` (what caused the
/// command), as a lower-case UUID string. An event's own ``EventMetadata/causationID`` is the
/// command that produced it. Reserved: a value set by a caller under this key is replaced.
public let commandCausationField = "backstage.command.causation"

/// A deterministic digest of a command: its name and its JSON with sorted keys when it is
/// `Encodable`, else its `String(reflecting:)`. Stable across processes and restarts (a `Set`
/// property encodes in hash order, though: prefer arrays in commands sent with explicit ids).
func commandFingerprint<C: Command>(_ command: C, name: String) -> String {
    var hasher = FNV1a()
    hasher.add(name)
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    if let encodable = command as? any Encodable, let json = try? encoder.encode(encodable) {
        hasher.add(json)
    } else {
        hasher.add(String(reflecting: command))
    }
    return "\(name):\(String(hasher.value, radix: 16))"
}

/// Metrics of the aggregate runtime (swift-metrics), per command type, made once per app (they
/// bind to the metrics factory in force when the ``BackstageApp`` is created).
struct DispatchMetrics: Sendable {
    private let commands: [ObjectIdentifier: CommandMetrics]

    /// No metrics at all when the factory in force is swift-metrics' no-op one: the handlers
    /// would discard every value, so dispatch does not even read the clock for them.
    init(routes: [ObjectIdentifier: AnyRoute]) {
        if MetricsSystem.factory is NOOPMetricsHandler {
            commands = [:]
        } else {
            commands = routes.mapValues { CommandMetrics(command: $0.name, category: $0.category) }
        }
    }

    func command<C: Command>(_ type: C.Type) -> CommandMetrics? {
        commands.isEmpty ? nil : commands[ObjectIdentifier(C.self)]
    }
}

/// The metrics of one command type: dispatches and their duration by outcome, events, conflicts.
final class CommandMetrics: Sendable {
    let succeededCount: Counter
    let rejectedCount: Counter
    let failedCount: Counter
    let succeededDuration: Metrics.Timer
    let rejectedDuration: Metrics.Timer
    let failedDuration: Metrics.Timer
    let events: Counter
    let conflicts: Counter

    init(command: String, category: String) {
        let base = [("command", command), ("category", category)]
        func outcome(_ value: String) -> [(String, String)] { base + [("outcome", value)] }
        succeededCount = Counter(label: "backstage.commands", dimensions: outcome("success"))
        rejectedCount = Counter(label: "backstage.commands", dimensions: outcome("rejected"))
        failedCount = Counter(label: "backstage.commands", dimensions: outcome("failed"))
        succeededDuration = Metrics.Timer(label: "backstage.command.duration", dimensions: outcome("success"))
        rejectedDuration = Metrics.Timer(label: "backstage.command.duration", dimensions: outcome("rejected"))
        failedDuration = Metrics.Timer(label: "backstage.command.duration", dimensions: outcome("failed"))
        events = Counter(label: "backstage.command.events", dimensions: base)
        conflicts = Counter(label: "backstage.command.conflicts", dimensions: base)
    }

    func succeeded(events count: Int, since start: ContinuousClock.Instant) {
        succeededDuration.record(duration: start.duration(to: .now))
        succeededCount.increment()
        if count > 0 { events.increment(by: count) }
    }

    func failed(rejected: Bool, since start: ContinuousClock.Instant) {
        (rejected ? rejectedDuration : failedDuration).record(duration: start.duration(to: .now))
        (rejected ? rejectedCount : failedCount).increment()
    }
}

/// Whether an instrument other than the no-op default is bootstrapped or bound to this task
/// (`withTracer`): spans and trace context are skipped otherwise, at the cost of this check.
func isTracing() -> Bool {
    // Both no-op instruments are structs: comparing the dynamic type is exact and spares two
    // dynamic casts per dispatch.
    let type = Swift.type(of: InstrumentationSystem.instrument)
    return !(type == NoOpInstrument.self || type == NoOpTracer.self)
}

/// Writes trace context into event metadata fields.
struct MetadataFieldsInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

/// Reads trace context from event metadata fields.
struct MetadataFieldsExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}
