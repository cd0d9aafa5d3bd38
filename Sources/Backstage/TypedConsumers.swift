import Foundation
import Logging
import Metrics
import Synchronization

/// A stored event decoded into its ``EventFamily``, with where and when it was stored.
///
/// Handlers and projections that declare a family receive envelopes: the event is decoded once,
/// by the same ``EventCodec`` the aggregates use, upcasters included.
public struct Envelope<Family: EventFamily>: Sendable {
    /// The event, in its current shape.
    public let event: Family
    /// The stored event it was decoded from (type name and schema version as stored, raw JSON).
    public let recorded: RecordedEvent

    /// Wraps a decoded event with the stored event it came from.
    public init(event: Family, recorded: RecordedEvent) {
        self.event = event
        self.recorded = recorded
    }

    /// The stream the event belongs to.
    public var stream: String { recorded.stream }
    /// The stream's category (the part before the first `-`).
    public var category: String { recorded.category }
    /// The event's version in its stream (the first event is 1).
    public var streamVersion: Int64 { recorded.streamVersion }
    /// The event's position in the global log.
    public var position: Int64 { recorded.position }
    /// The event's position in the global log, with its writing transaction (what checkpoints store).
    public var logPosition: LogPosition { recorded.logPosition }
    /// The event's unique id.
    public var id: UUID { recorded.id }
    /// Where the event came from (command, causation and correlation ids, free fields).
    public var metadata: EventMetadata { recorded.metadata }
    /// When the event was stored.
    public var recordedAt: Date { recorded.recordedAt }
}

/// What a typed consumer does with a stored event its family cannot read: a type name or
/// schema version nothing reads, or JSON that does not decode.
public enum DecodeFailurePolicy: Sendable, Hashable {
    /// Throw the ``CodecError`` (it names the event's position): the subscription's
    /// ``FailurePolicy`` handles it like any failure (retries, then stop, skip or park; the
    /// default parks the event with the error). The default.
    case fail
    /// Skip the event and record it: a warning in the log (`backstage.decode`) naming the
    /// subscription, the position and the error, and the counter
    /// `backstage.subscription.undecodable_skipped` (dimension `subscription`). The checkpoint
    /// moves past it.
    case skip
}

private let decodeLogger = Logger(label: "backstage.decode")
private let sharedCodecs = Mutex<[ObjectIdentifier: any Sendable]>([:])

extension EventCodec {
    /// The codec of `Family`, built once per process and shared by typed consumers.
    /// - Throws: ``CodecError/duplicateMember(family:type:schemaVersion:)`` when the family is invalid.
    public static func shared() throws(CodecError) -> EventCodec<Family> {
        let key = ObjectIdentifier(Family.self)
        if let codec = sharedCodecs.withLock({ $0[key] }) as? EventCodec<Family> { return codec }
        let codec = try EventCodec<Family>()
        sharedCodecs.withLock { $0[key] = codec }
        return codec
    }

    /// Decodes `recorded` for the subscription `subscription` under `policy`.
    /// - Returns: the envelope; nil only when the event does not decode and `policy` is
    ///   ``DecodeFailurePolicy/skip`` (the skip has been logged and counted).
    /// - Throws: the ``CodecError`` when the event does not decode and `policy` is ``DecodeFailurePolicy/fail``.
    public func envelope(_ recorded: RecordedEvent, policy: DecodeFailurePolicy, subscription: String)
        throws(CodecError) -> Envelope<Family>?
    {
        do {
            return try envelope(recorded)
        } catch {
            guard policy == .skip else { throw error }
            decodeLogger.warning(
                "skipped an event that does not decode",
                metadata: [
                    "subscription": "\(subscription)", "position": "\(recorded.position)",
                    "stream": "\(recorded.stream)", "error": "\(error)",
                ])
            Counter(label: "backstage.subscription.undecodable_skipped", dimensions: [("subscription", subscription)])
                .increment()
            return nil
        }
    }
}

/// An ``EventHandler`` that consumes one ``EventFamily`` and receives typed ``Envelope``s.
///
/// Its filter is derived from the family (every type name the codec reads, upcast ones
/// included), so the database sends only those events; each is decoded once by the family's
/// shared codec. Several aggregates' events: declare a family whose members span them.
///
/// ```swift
/// struct ReceiptSender: TypedEventHandler {
///     let name = "receipts"
///     func handle(_ envelope: Envelope<ShowEvent>) async throws {
///         guard case .ticketSold(let sold) = envelope.event else { return }
///         try await mailer.sendReceipt(sold, correlation: envelope.metadata.correlationID)
///     }
/// }
/// ```
public protocol TypedEventHandler: EventHandler {
    /// The events the handler consumes.
    associatedtype Family: EventFamily
    /// What happens to an event the family cannot read. Defaults to ``DecodeFailurePolicy/fail``.
    var decodeFailure: DecodeFailurePolicy { get }
    /// Handles one event. Throw to have it retried according to the failure policy.
    func handle(_ envelope: Envelope<Family>) async throws
}

extension TypedEventHandler {
    /// Fail: an undecodable event goes through the failure policy.
    public var decodeFailure: DecodeFailurePolicy { .fail }

    /// The family's type names (upcast ones included); every event when the family is invalid
    /// (each event then fails with the codec's error).
    public var filter: EventFilter { (try? EventCodec<Family>.shared().filter) ?? .all }

    /// Decodes the event with the family's codec and calls ``handle(_:)-(Envelope<Family>)``.
    public func handle(_ event: RecordedEvent) async throws {
        guard let envelope = try EventCodec<Family>.shared().envelope(event, policy: decodeFailure, subscription: name)
        else { return }
        try await handle(envelope)
    }
}

extension InMemoryProjection {
    /// Creates a projection that consumes `family`: it reads the family's type names only (upcast
    /// ones included) and folds each event, decoded by the family's codec, into `initial`.
    ///
    /// ```swift
    /// let sales = try InMemoryProjection(name: "sales", consuming: ShowEvent.self, initial: [String: Int]()) {
    ///     totals, envelope in
    ///     if case .ticketSold(let sold) = envelope.event { totals[sold.showID, default: 0] += sold.price }
    /// }
    /// ```
    /// - Throws: ``CodecError/duplicateMember(family:type:schemaVersion:)`` when the family is invalid.
    public convenience init<Family: EventFamily>(
        name: String, consuming family: Family.Type, options: ProjectionOptions = ProjectionOptions(),
        decodeFailure: DecodeFailurePolicy = .fail, initial: State,
        apply: @escaping @Sendable (inout State, Envelope<Family>) throws -> Void
    ) throws {
        let codec = try EventCodec<Family>.shared()
        self.init(name: name, filter: codec.filter, options: options, initial: initial) { state, event in
            guard let envelope = try codec.envelope(event, policy: decodeFailure, subscription: name) else { return }
            try apply(&state, envelope)
        }
    }
}
