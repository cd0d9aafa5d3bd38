import Foundation

/// Errors raised by routing: registration mistakes and commands with no route.
public enum RoutingError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The command type is routed already.
    case duplicateRoute(command: String)
    /// No route was registered for the command type.
    case noRoute(command: String)
    /// The aggregate's category is empty or contains `-`.
    case invalidCategory(aggregate: String, category: String)
    /// Two aggregate types use the same stream category.
    case categoryInUse(category: String, aggregates: [String])
    /// The aggregate's event family is inconsistent.
    case invalidEventFamily(CodecError)

    public var description: String {
        switch self {
        case .duplicateRoute(let c): "command \(c) is routed twice"
        case .noRoute(let c):
            "no route for command \(c): register it with Router.route(_:) (a DecidingCommand) or Router.route(_:id:decide:)"
        case .invalidCategory(let a, let c):
            "aggregate \(a) has category '\(c)': a category must be non-empty and contain no '-'"
        case .categoryInUse(let c, let a): "category '\(c)' is used by \(a.joined(separator: " and "))"
        case .invalidEventFamily(let e): "\(e)"
        }
    }
}

/// Maps each command type to the identity of its aggregate instance and to the function that
/// decides the command.
///
/// Commands that decide themselves (``DecidingCommand``) are routed by their types alone; other
/// commands take the identity and the decision as closures:
///
/// ```swift
/// var router = try Router(ScheduleShow.self, AddTicket.self, SellTicket.self)
/// try router.route(RefundTicket.self, id: \.showID) { show, command in try show.refund(command) }
/// ```
public struct Router: Sendable {
    var routes: [ObjectIdentifier: AnyRoute] = [:]
    var aggregates: [ObjectIdentifier: AnyAggregateType] = [:]

    /// Creates an empty router.
    public init() {}

    /// Creates a router for `commands`, each routed by its own ``DecidingCommand/aggregateID``
    /// and decided by its own ``DecidingCommand/decide(_:)``.
    ///
    /// - Throws: ``RoutingError`` as ``route(_:)`` does.
    public init(_ commands: any DecidingCommand.Type...) throws(RoutingError) {
        for command in commands { try add(command) }
    }

    /// Routes each of `commands` by its own ``DecidingCommand/aggregateID``, decided by its own
    /// ``DecidingCommand/decide(_:)``.
    ///
    /// - Throws: ``RoutingError`` when a command type is routed already or its aggregate is not
    ///   valid (bad category, category taken by another aggregate, inconsistent event family).
    public mutating func route(_ commands: any DecidingCommand.Type...) throws(RoutingError) {
        for command in commands { try add(command) }
    }

    private mutating func add<C: DecidingCommand>(_ command: C.Type) throws(RoutingError) {
        try route(C.self, id: { $0.aggregateID }, decide: { state, command in try command.decide(state) })
    }

    /// Routes commands of type `command` to the instance of `C.Target` named by `id`, decided by `decide`.
    ///
    /// `decide` returns the events the command produces, or throws the aggregate's `Rejection`
    /// when a business rule rejects it; `dispatch` throws that value to the caller as it is, and
    /// ``BackstageApp/attempt(_:options:)`` returns it typed. Any other error `decide` throws
    /// reaches the caller of `dispatch` unchanged. (A closure is not typed here: Swift infers a
    /// closure that contains `try` as throwing `any Error` unless it is written
    /// `{ show, command throws(ShowError) in ... }`; a ``DecidingCommand`` declares its
    /// `decide` with the typed `Rejection` instead.)
    ///
    /// - Throws: ``RoutingError`` when the command type is routed already or the aggregate is
    ///   not valid (bad category, category taken by another aggregate, inconsistent event family).
    public mutating func route<C: Command>(
        _ command: C.Type, id: @escaping @Sendable (C) -> String,
        decide: @escaping @Sendable (C.Target, C) throws -> [C.Target.Event]
    ) throws(RoutingError) {
        let key = ObjectIdentifier(C.self)
        if routes[key] != nil { throw .duplicateRoute(command: C.commandName) }
        let aggregate = try registered(C.Target.self)
        routes[key] = Route<C>(id: id, decide: decide, aggregate: aggregate)
    }

    /// Makes `aggregate` known to the router without routing a command to it (for loading its
    /// state or its events). Routing a command registers its aggregate too.
    public mutating func register<A: Aggregate>(_ aggregate: A.Type) throws(RoutingError) {
        _ = try registered(A.self)
    }

    mutating func registered<A: Aggregate>(_ aggregate: A.Type) throws(RoutingError) -> AggregateType<A> {
        let key = ObjectIdentifier(A.self)
        if let known = aggregates[key] as? AggregateType<A> { return known }
        let category = A.category
        if category.isEmpty || category.contains("-") {
            throw .invalidCategory(aggregate: "\(A.self)", category: category)
        }
        if let other = aggregates.values.first(where: { $0.category == category }) {
            throw .categoryInUse(category: category, aggregates: [other.name, "\(A.self)"])
        }
        let codec: EventCodec<A.Event>
        do { codec = try EventCodec<A.Event>() } catch { throw .invalidEventFamily(error) }
        let type = AggregateType<A>(codec: codec)
        aggregates[key] = type
        return type
    }

    package func route<C: Command>(for command: C.Type) throws(RoutingError) -> Route<C> {
        guard let route = routes[ObjectIdentifier(C.self)] else { throw .noRoute(command: C.commandName) }
        // The route under `C`'s identifier is a `Route<C>`: `route(_:id:decide:)` stores no other.
        return unsafeDowncast(route, to: Route<C>.self)
    }

    package func aggregate<A: Aggregate>(_ type: A.Type) throws(RoutingError) -> AggregateType<A> {
        if let known = aggregates[ObjectIdentifier(A.self)] as? AggregateType<A> { return known }
        var copy = self
        return try copy.registered(A.self)
    }
}

package class AnyAggregateType: @unchecked Sendable {
    let name: String
    let category: String
    init(name: String, category: String) {
        self.name = name
        self.category = category
    }
}

/// What the router knows of an aggregate type: its category and its event codec.
package final class AggregateType<A: Aggregate>: AnyAggregateType, @unchecked Sendable {
    /// The codec of the aggregate's events.
    package let codec: EventCodec<A.Event>
    init(codec: EventCodec<A.Event>) {
        self.codec = codec
        super.init(name: "\(A.self)", category: A.category)
    }
}

package class AnyRoute: @unchecked Sendable {
    /// The command's name, computed once.
    package let name: String
    /// The stream category of the command's aggregate.
    package let category: String
    init(name: String, category: String) {
        self.name = name
        self.category = category
    }
}

package final class Route<C: Command>: AnyRoute, @unchecked Sendable {
    /// The name of the dispatch span.
    package let spanName = "dispatch \(C.commandName)"
    /// The name of the span around the decision.
    package let decideSpanName = "decide \(C.commandName)"
    /// The name of the span around the append.
    package let appendSpanName = "append \(C.Target.category)"
    package let id: @Sendable (C) -> String
    package let decide: @Sendable (C.Target, C) throws -> [C.Target.Event]
    package let aggregate: AggregateType<C.Target>
    /// False when a command of this type cannot be a ``ValidatableCommand`` (a value type that
    /// does not conform): dispatch skips the dynamic cast then.
    package let mayValidate: Bool = C.self is any ValidatableCommand.Type || C.self is AnyObject.Type
    init(
        id: @escaping @Sendable (C) -> String,
        decide: @escaping @Sendable (C.Target, C) throws -> [C.Target.Event],
        aggregate: AggregateType<C.Target>
    ) {
        self.id = id
        self.decide = decide
        self.aggregate = aggregate
        super.init(name: C.commandName, category: C.Target.category)
    }
}
