import Foundation

/// Code that runs for matching events of the log: send an email, call another system.
///
/// A handler is a subscription: its ``name`` keys its checkpoint. Delivery is at least once:
/// after a crash, the events handled since the last committed checkpoint are handled again.
/// Events of one partition (one stream by default) arrive in log order, one batch at a time.
///
/// ```swift
/// struct ReceiptSender: EventHandler {
///     let name = "receipts"
///     let filter = EventFilter(types: [TicketSold.typeName])
///     func handle(_ event: RecordedEvent) async throws { try await mailer.send(...) }
/// }
/// ```
///
/// To receive typed events of an ``EventFamily`` (decoded and upcast by its codec, with the
/// filter derived from it), conform to ``TypedEventHandler`` instead.
public protocol EventHandler: Sendable {
    /// The subscription id: stable, `[A-Za-z0-9_.-]`, at most 100 characters.
    var name: String { get }
    /// Which events the handler wants; evaluated in the database. Defaults to every event.
    var filter: EventFilter { get }
    /// Concurrency, partitioning, batching and failure policy. Defaults to `HandlerOptions()`.
    var options: HandlerOptions { get }
    /// Handles one event. Throw to have it retried according to the failure policy.
    func handle(_ event: RecordedEvent) async throws
    /// Handles a batch of events of one partition, in log order. The default calls
    /// ``handle(_:)`` for each. If it throws, the whole batch is retried; when the retries run
    /// out, its events are retried one by one so only the failing one meets the final action.
    func handle(batch: [RecordedEvent]) async throws
}

extension EventHandler {
    /// Every event.
    public var filter: EventFilter { .all }
    /// The default options.
    public var options: HandlerOptions { HandlerOptions() }
    /// Handles each event in order.
    public func handle(batch: [RecordedEvent]) async throws {
        for event in batch { try await handle(event) }
    }
}

/// Which events must be handled in order, one at a time: those with the same key.
public enum PartitionKey: Sendable {
    /// The event's stream (the default): each aggregate instance's events in order.
    case stream
    /// The stream's category: all events of a kind of aggregate in order.
    case category
    /// A key computed from the event (a tenant, a customer id in the payload...).
    case custom(@Sendable (RecordedEvent) -> String)

    /// The partition key of `event`.
    public func key(_ event: RecordedEvent) -> String {
        switch self {
        case .stream: event.stream
        case .category: event.category
        case .custom(let f): f(event)
        }
    }

    /// The worker (0..<concurrency) that handles `event`: a stable hash of its key. A worker
    /// handles its partitions in order, so an event that is being retried holds back the other
    /// partitions of its worker (not those of other workers).
    package func worker(for event: RecordedEvent, concurrency: Int) -> Int {
        guard concurrency > 1 else { return 0 }
        var hash = FNV1a()
        hash.add(key(event))
        return Int(hash.value % UInt64(concurrency))
    }
}

/// Where a subscription with no stored checkpoint starts.
public enum StartPosition: Sendable, Hashable {
    /// From the first event of the log.
    case origin
    /// After the events stored when it first starts: only new events.
    case end
    /// After the given position.
    case after(LogPosition)
}

/// What happens to an event once its retries are exhausted.
public enum FinalAction: Sendable, Hashable {
    /// Stop the subscription; its checkpoint stays before the event until an operator acts.
    case stop
    /// Log it, count it, and move on: the event is not handled.
    case skip
    /// Store it in the parked-event (dead-letter) store with the error, and move on; it can be
    /// replayed or discarded later.
    case park
}

/// How a subscription treats a failing batch: retries with exponential backoff and jitter, then
/// a ``FinalAction``. Every failure is logged and counted; nothing is dropped silently.
public struct FailurePolicy: Sendable, Hashable {
    /// Retries after the first attempt.
    public var maxRetries: Int
    /// The wait before the first retry.
    public var initialBackoff: Duration
    /// The longest wait between retries.
    public var maxBackoff: Duration
    /// The factor between consecutive waits.
    public var multiplier: Double
    /// The random part of each wait, as a fraction of it (0.2: ±20%).
    public var jitter: Double
    /// What happens after the last retry.
    public var finalAction: FinalAction

    /// Creates a policy. The default retries 5 times from 100 ms up to 10 s, then parks the event.
    public init(
        maxRetries: Int = 5, initialBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(10),
        multiplier: Double = 2, jitter: Double = 0.2, finalAction: FinalAction = .park
    ) {
        self.maxRetries = max(maxRetries, 0)
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.multiplier = max(multiplier, 1)
        self.jitter = min(max(jitter, 0), 1)
        self.finalAction = finalAction
    }

    /// The wait before retry number `retry` (1 is the first retry), jitter included.
    package func backoff(retry: Int) -> Duration {
        func seconds(_ d: Duration) -> Double {
            Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        }
        let exponent = Double(min(max(retry - 1, 0), 64))
        var wait = min(seconds(initialBackoff) * pow(multiplier, exponent), seconds(maxBackoff))
        if jitter > 0 { wait *= Double.random(in: (1 - jitter)...(1 + jitter)) }
        return .nanoseconds(Int64(max(wait, 0) * 1e9))
    }
}

/// How a subscription reads and processes the log.
public struct HandlerOptions: Sendable {
    /// Workers running at once; each owns a set of partitions.
    public var concurrency: Int = 1
    /// Events with the same key are handled in order by one worker.
    public var partitionKey: PartitionKey = .stream
    /// Most events per batch (one partition's events, in order).
    public var batchSize: Int = 1
    /// How long a worker waits for a batch to fill before handling a partial one (0: never waits).
    public var batchTimeout: Duration = .zero
    /// Retries and final action.
    public var failurePolicy = FailurePolicy()
    /// Where to start when no checkpoint is stored.
    public var start: StartPosition = .origin
    /// Most events held in memory (read but not yet done): the back-pressure bound.
    public var maxInFlight: Int = 1_000
    /// Events read from the store per page (at most ``maxInFlight``).
    public var pageSize: Int = 500
    /// How often the source polls the store when no notification arrived.
    public var pollInterval: Duration = .seconds(1)
    /// Least time between two checkpoint commits of a plain handler (projections commit with
    /// every batch).
    public var checkpointInterval: Duration = .milliseconds(100)
    /// Partitions the subscription is split into, by ``partitionKey`` (1: one subscription, today's
    /// behaviour). Each partition is a subscription of its own (`name#p/N`: checkpoint, lease
    /// with its fencing token, parked events), and the live processes share them: see
    /// the Partitions article. Needs a store that selects partitions (PostgreSQL, in-memory) and a
    /// ``PartitionKey/stream`` or ``PartitionKey/category`` key.
    public var partitions: Int = 1

    /// The defaults (one worker, one event per batch, partitioned by stream), with any of the
    /// settings changed.
    public init(
        concurrency: Int = 1, partitionKey: PartitionKey = .stream, batchSize: Int = 1,
        batchTimeout: Duration = .zero, failurePolicy: FailurePolicy = FailurePolicy(),
        start: StartPosition = .origin, maxInFlight: Int = 1_000, pageSize: Int = 500,
        pollInterval: Duration = .seconds(1), checkpointInterval: Duration = .milliseconds(100), partitions: Int = 1
    ) {
        self.partitions = partitions
        self.concurrency = concurrency
        self.partitionKey = partitionKey
        self.batchSize = batchSize
        self.batchTimeout = batchTimeout
        self.failurePolicy = failurePolicy
        self.start = start
        self.maxInFlight = maxInFlight
        self.pageSize = pageSize
        self.pollInterval = pollInterval
        self.checkpointInterval = checkpointInterval
    }
}

/// Errors of the pipelines.
public enum PipelineError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A subscription or table name is not allowed.
    case invalidName(String, reason: String)
    /// Two subscriptions have the same name.
    case duplicateSubscription(String)
    /// No subscription has this name.
    case unknownSubscription(String)
    /// No parked event at this position for this subscription: it was never parked, or another
    /// call (in this process or another) replayed or discarded it first, or is replaying it now.
    /// Nothing was applied by the call that gets this error.
    case parkedEventNotFound(subscription: String, position: LogPosition)
    /// The subscription stopped after an event failed and its policy is ``FinalAction/stop``.
    case subscriptionStopped(String, position: LogPosition, error: String)
    /// The operation needs the pipeline service to be running.
    case notRunning
    /// A subscription asks for partitions that cannot run here (the store does not select
    /// partitions, or the partition key is custom).
    case partitionsUnsupported(String, reason: String)

    public var description: String {
        switch self {
        case .invalidName(let name, let reason): "invalid name '\(name)': \(reason)"
        case .duplicateSubscription(let name): "two subscriptions are named '\(name)'"
        case .unknownSubscription(let name): "no subscription named '\(name)'"
        case .parkedEventNotFound(let s, let p): "subscription '\(s)' has no parked event at position \(p)"
        case .subscriptionStopped(let s, let p, let e):
            "subscription '\(s)' stopped at the event at position \(p), which kept failing: \(e)"
        case .notRunning: "the pipeline service is not running"
        case .partitionsUnsupported(let s, let reason): "subscription '\(s)' cannot be partitioned: \(reason)"
        }
    }
}

/// Checks a subscription name: non-empty, at most 100 characters of `[A-Za-z0-9_.@-]`.
package func validateSubscriptionName(_ name: String) throws(PipelineError) {
    if name.isEmpty { throw .invalidName(name, reason: "it is empty") }
    if name.utf8.count > 100 { throw .invalidName(String(name.prefix(40)), reason: "it is longer than 100 characters") }
    let allowed = name.utf8.allSatisfy { c in
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
            || c == 0x5F || c == 0x2E || c == 0x2D || c == 0x40
    }
    if !allowed { throw .invalidName(name, reason: "only letters, digits, '_', '.', '-' and '@' are allowed") }
}
