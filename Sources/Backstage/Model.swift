import Foundation

/// A fact that happened in the domain: immutable, stored forever.
///
/// An event is stored under a stable ``typeName`` (never the Swift type name, so types can be
/// renamed freely) and a ``schemaVersion``; old shapes are turned into the current one by
/// ``Upcaster``s on read.
///
/// ```swift
/// struct TicketAdded: Event {
///     static let typeName = "TicketAdded"
///     var showID: String
///     var ticketID: String
/// }
/// ```
public protocol Event: Codable, Sendable {
    /// The stable name stored with every event of this type.
    static var typeName: String { get }
    /// The version of this event's stored shape; bump it when the shape changes and add an
    /// ``Upcaster`` for the previous version. Defaults to 1.
    static var schemaVersion: Int { get }
}

extension Event {
    /// Version 1 unless the type says otherwise.
    public static var schemaVersion: Int { 1 }
}

/// The set of events one aggregate emits, usually an enum with one case per event type.
///
/// ```swift
/// enum ShowEvent: EventFamily {
///     case scheduled(ShowScheduled)
///     case ticketAdded(TicketAdded)
///
///     static let members: [EventMember<ShowEvent>] = [.init(scheduled), .init(ticketAdded)]
/// }
/// ```
///
/// Each member names its case once: the event type is the case's payload type. Stored events
/// decode straight back into the family: no casting in user code.
///
/// The default ``event`` reads the case's payload by reflection (`Mirror`), which costs a few
/// microseconds per event, about as much as encoding it. A family on a hot path writes the
/// `switch` instead:
///
/// ```swift
/// var event: any Event {
///     switch self {
///     case .scheduled(let e): e
///     case .ticketAdded(let e): e
///     }
/// }
/// ```
///
/// The `BackstageMacros` product's `@EventFamily` macro writes both `members` and this `switch`
/// from the cases, so each event type is named once.
public protocol EventFamily: Sendable {
    /// Every event type of the family with the case that wraps it.
    static var members: [EventMember<Self>] { get }
    /// Upcasters that turn older stored shapes into members of this family. Defaults to none.
    static var upcasters: [Upcaster<Self>] { get }
    /// The event this value carries. The default implementation reads the enum case's payload
    /// by reflection; write a `switch` to avoid it on hot paths (see ``EventFamily``).
    var event: any Event { get }
}

extension EventFamily {
    /// No upcasters.
    public static var upcasters: [Upcaster<Self>] { [] }

    /// Reads the single associated value of the enum case.
    public var event: any Event {
        if let payload = Mirror(reflecting: self).children.first?.value as? any Event {
            return payload
        }
        preconditionFailure(
            "\(Self.self) must be an enum whose cases each carry one Event, or implement `event`")
    }
}

/// One member of an ``EventFamily``: an event type and the case that wraps it.
public struct EventMember<Family: EventFamily>: Sendable {
    /// The stored type name.
    public let typeName: String
    /// The current schema version.
    public let schemaVersion: Int
    let decode: @Sendable (JSONDecoder, Data) throws -> Family

    /// Declares that `type` belongs to the family, wrapped by `wrap` (usually the enum case).
    public init<E: Event>(_ type: E.Type, _ wrap: @escaping @Sendable (E) -> Family) {
        self.typeName = E.typeName
        self.schemaVersion = E.schemaVersion
        self.decode = { decoder, data in wrap(try decoder.decode(E.self, from: data)) }
    }

    /// Declares the payload type of the enum case `wrap` a member of the family:
    /// `.init(ShowEvent.ticketAdded)`, or `.init(ticketAdded)` inside the enum.
    public init<E: Event>(_ wrap: @escaping @Sendable (E) -> Family) {
        self.init(E.self, wrap)
    }
}

/// Reads an old stored shape of an event, on read: into the family's current event, or into a
/// newer stored shape (or another type name) that another upcaster or member reads.
///
/// Upcasters chain: the codec follows `to:` steps until a member of the family reads the shape,
/// so each schema bump adds one upcaster for the version it replaces and older ones keep working:
///
/// ```swift
/// static let upcasters: [Upcaster<ShowEvent>] = [
///     // v1 -> v2: v1 had no price.
///     Upcaster(from: "TicketAdded", version: 1, as: TicketAddedV1.self,
///              to: "TicketAdded", version: 2) { old in TicketAddedV2(showID: old.showID, ticketID: old.ticketID, price: 0) },
///     // v2 -> v3 (the current `TicketAdded`): straight into the family.
///     Upcaster(from: "TicketAdded", version: 2, as: TicketAddedV2.self) { old in
///         .ticketAdded(TicketAdded(showID: old.showID, ticketID: old.ticketID, price: old.price, currency: "EUR"))
///     },
///     // A renamed type: events stored as "SeatSold" v1 are read as "TicketSold" v1.
///     .renamed(from: "SeatSold", version: 1, to: "TicketSold", version: 1),
/// ]
/// ```
public struct Upcaster<Family: EventFamily>: Sendable {
    /// The stored type name this upcaster reads.
    public let typeName: String
    /// The stored schema version this upcaster reads.
    public let schemaVersion: Int
    /// Where the upcaster leads: a family value, or another stored shape.
    enum Step: Sendable {
        case value(Family)
        case next(type: String, schemaVersion: Int, data: Data)
    }
    let step: @Sendable (JSONDecoder, Data) throws -> Step

    /// Reads events stored as `typeName` at `version` with the old shape `Old` and converts them
    /// into the family.
    public init<Old: Decodable & Sendable>(
        from typeName: String, version: Int, as old: Old.Type,
        convert: @escaping @Sendable (Old) throws -> Family
    ) {
        self.typeName = typeName
        self.schemaVersion = version
        self.step = { decoder, data in .value(try convert(decoder.decode(Old.self, from: data))) }
    }

    /// Reads events stored as `typeName` at `version` with the old shape `Old` and converts them
    /// into the shape stored as `newType` at `newVersion`, which another upcaster or a member of
    /// the family reads next (a chain: v1 -> v2 -> current).
    public init<Old: Decodable & Sendable, New: Encodable & Sendable>(
        from typeName: String, version: Int, as old: Old.Type, to newType: String, version newVersion: Int,
        convert: @escaping @Sendable (Old) throws -> New
    ) {
        self.typeName = typeName
        self.schemaVersion = version
        self.step = { decoder, data in
            let new = try convert(decoder.decode(Old.self, from: data))
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            return .next(type: newType, schemaVersion: newVersion, data: try encoder.encode(new))
        }
    }

    /// Reads events stored as `typeName` at `version` as if they were stored as `newType` at
    /// `newVersion`, unchanged: a renamed event type whose shape did not change.
    public static func renamed(from typeName: String, version: Int, to newType: String, version newVersion: Int)
        -> Upcaster
    {
        Upcaster(typeName: typeName, schemaVersion: version) { _, data in
            .next(type: newType, schemaVersion: newVersion, data: data)
        }
    }

    private init(typeName: String, schemaVersion: Int, step: @escaping @Sendable (JSONDecoder, Data) throws -> Step) {
        self.typeName = typeName
        self.schemaVersion = schemaVersion
        self.step = step
    }
}

/// A request to change the state of one aggregate; it may be rejected.
///
/// The ``Target`` aggregate decides what happens; a ``Router`` maps the command to the identity
/// of the aggregate instance and to the decision function. A ``DecidingCommand`` carries both
/// itself, so routing it takes no closure.
public protocol Command: Sendable {
    /// The aggregate type that handles this command.
    associatedtype Target: Aggregate
    /// A stable name for logs and metrics. Defaults to the Swift type name.
    static var commandName: String { get }
}

extension Command {
    /// The Swift type name.
    public static var commandName: String { String(describing: Self.self) }
}

/// A command that names its aggregate instance and decides itself on the aggregate's state:
/// `Router(ScheduleShow.self, AddTicket.self)` routes such commands with no closure.
///
/// ```swift
/// struct AddTicket: DecidingCommand {
///     var showID: String
///     var ticketID: String
///
///     var aggregateID: String { showID }
///
///     func decide(_ show: Show) throws(ShowError) -> [ShowEvent] {
///         guard show.tickets.count < show.capacity else { throw .capacityReached(capacity: show.capacity) }
///         return [.ticketAdded(TicketAdded(showID: showID, ticketID: ticketID))]
///     }
/// }
/// ```
///
/// `decide` can only throw the aggregate's `Rejection` (a `Target` whose `Rejection` is `Never`
/// decides without throwing), so a business rule's error reaches the caller with its type.
/// `Target` is inferred from `decide`'s parameter: no `typealias Target` is needed.
public protocol DecidingCommand: Command where Target: Aggregate {
    /// The aggregate that decides the command: inferred from the parameter of ``decide(_:)``.
    // Restated so that Swift infers it from `decide(_:)` (it does not infer an inherited
    // associated type from a requirement of the refining protocol); the `where` clause keeps it
    // the same as `Command.Target` without the redeclaration warning.
    associatedtype Target
    /// The identity of the aggregate instance the command goes to: its stream is
    /// `"<category>-<aggregateID>"`.
    var aggregateID: String { get }
    /// The events the command produces on `state`, or the rejection of a business rule.
    func decide(_ state: Target) throws(Target.Rejection) -> [Target.Event]
}

/// A consistency boundary: its state is rebuilt from its own events, and it decides which events
/// a command produces.
///
/// Both functions are pure: `apply` evolves the state with an event; the decision functions
/// registered in the ``Router`` turn a command and the current state into events or a typed
/// ``Rejection``.
public protocol Aggregate: Sendable {
    /// The events this aggregate emits and is rebuilt from.
    associatedtype Event: EventFamily
    /// The typed error returned when a command is rejected by a business rule.
    associatedtype Rejection: Error = Never
    /// The stream category: every instance is stored in the stream `"<category>-<id>"`.
    /// It must be non-empty and contain no `-`.
    static var category: String { get }
    /// The version of the snapshot shape; snapshots of another version are ignored. Defaults to 1.
    static var snapshotSchemaVersion: Int { get }
    /// The state before any event.
    init()
    /// Evolves the state with one event.
    mutating func apply(_ event: Event)
}

extension Aggregate {
    /// Version 1 unless the aggregate says otherwise.
    public static var snapshotSchemaVersion: Int { 1 }

    /// The stream that stores the instance with identity `id`.
    public static func streamID(_ id: String) -> String { "\(category)-\(id)" }
}

/// Metadata stored with every event: where it came from and why.
public struct EventMetadata: Codable, Sendable, Hashable {
    /// The command that produced the event.
    public var commandID: UUID?
    /// The message (command or event) that caused the event.
    public var causationID: UUID?
    /// The id shared by everything that follows from one original request.
    public var correlationID: UUID?
    /// Free-form fields (user id, tenant, request id, ...).
    public var fields: [String: String]

    /// Creates metadata.
    public init(
        commandID: UUID? = nil, causationID: UUID? = nil, correlationID: UUID? = nil,
        fields: [String: String] = [:]
    ) {
        self.commandID = commandID
        self.causationID = causationID
        self.correlationID = correlationID
        self.fields = fields
    }
}
