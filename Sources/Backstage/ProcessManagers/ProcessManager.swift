import Foundation

/// Coordinates several aggregates over time: it reacts to events by dispatching commands, and
/// keeps a small state per process instance (one reservation, one refund...).
///
/// For each typed event, ``route(_:)`` says whether it starts, continues or stops an instance,
/// identified by a correlation key taken from the event. ``handle(_:state:)`` returns what to do
/// (dispatch a command now, schedule one for later, cancel a scheduled one), and ``apply(_:to:)``
/// evolves the instance's state. Run it with a ``ProcessManagerProjection``: the instances and the
/// commands each batch produces are stored in the same transaction as its checkpoint, and a
/// ``CommandScheduler`` dispatches the stored commands, so a redelivered event never applies twice
/// and every command takes effect exactly once.
///
/// ```swift
/// struct ReservationProcess: ProcessManager {
///     let name = "reservations"
///     let holdTime: Duration
///     let initialState = ReservationState()
///     func route(_ envelope: Envelope<ShowEvent>) -> ProcessRouting {
///         switch envelope.event {
///         case .seatsReserved(let e): .start(e.reservationID)
///         case .reservationPaid(let e): .stop(e.reservationID)
///         case .reservationReleased(let e): .stop(e.reservationID)
///         default: .ignore
///         }
///     }
///     func handle(_ envelope: Envelope<ShowEvent>, state: ReservationState) throws -> [ProcessAction] {
///         switch envelope.event {
///         case .seatsReserved(let e):
///             [.schedule(ReleaseReservation(showID: e.showID, reservationID: e.reservationID),
///                        after: holdTime, key: "release-\(e.reservationID)")]
///         case .reservationPaid(let e): [.cancel(key: "release-\(e.reservationID)")]
///         default: []
///         }
///     }
/// }
/// ```
public protocol ProcessManager: Sendable {
    /// The events the process manager consumes.
    associatedtype Family: EventFamily
    /// The state of one instance; stored as JSON between events.
    associatedtype State: Codable & Sendable

    /// The name: `[A-Za-z0-9_.-]`; its subscription is `name@v1`, and it names its commands.
    var name: String { get }
    /// The state of a new instance, before its first event.
    var initialState: State { get }
    /// Batching, failure policy (for errors ``handle(_:state:)`` throws) and polling.
    var options: ProjectionOptions { get }
    /// What happens to an event the family cannot read. Defaults to ``DecodeFailurePolicy/fail``.
    var decodeFailure: DecodeFailurePolicy { get }

    /// Which instance the event concerns, and whether it starts, continues or stops it.
    func route(_ envelope: Envelope<Family>) -> ProcessRouting
    /// The commands the event calls for, given the instance's state before the event.
    /// Throw to have the event retried under ``options``' failure policy.
    func handle(_ envelope: Envelope<Family>, state: State) throws -> [ProcessAction]
    /// Evolves the instance's state with the event (after ``handle(_:state:)``). Defaults to no change.
    func apply(_ envelope: Envelope<Family>, to state: inout State)
    /// What to do when one of its commands fails to dispatch (rejected, or an error): retry it,
    /// skip it, or stop the instance. Defaults to ``CommandFailureAction/defaultAction(for:)``.
    func commandFailed(_ failure: CommandFailure) -> CommandFailureAction
}

extension ProcessManager {
    /// The projection defaults (batches of up to 500 events, failure policy retries then parks).
    public var options: ProjectionOptions { ProjectionOptions() }
    /// Fail: an undecodable event goes through the failure policy.
    public var decodeFailure: DecodeFailurePolicy { .fail }
    /// No change.
    public func apply(_ envelope: Envelope<Family>, to state: inout State) {}
    /// Retries with backoff a few times, then skips the command (logged).
    public func commandFailed(_ failure: CommandFailure) -> CommandFailureAction {
        .defaultAction(for: failure)
    }
}

/// Which process instance an event concerns.
public enum ProcessRouting: Sendable, Hashable {
    /// Starts the instance `key` (continues it if it exists already).
    case start(String)
    /// Continues the instance `key`; ignored when no such instance exists.
    case `continue`(String)
    /// Handles the event in the instance `key`, then deletes the instance; ignored when it does not exist.
    case stop(String)
    /// The event concerns no instance.
    case ignore
}

/// What a process manager (or any code, through a ``CommandScheduler``) asks for.
public enum ProcessAction: Sendable {
    /// Dispatches the command as soon as possible (stored as due at the epoch, due whatever the clock says).
    case dispatch(any Command & Encodable)
    /// Dispatches the command at a time: ``ScheduleTime``. `key` names it for ``cancel(key:)``.
    case schedule(any Command & Encodable, at: ScheduleTime, key: String?)
    /// Cancels every scheduled command (not yet dispatched) with this key.
    case cancel(key: String)

    /// Dispatches `command` `delay` after the triggering event was recorded.
    public static func schedule(_ command: any Command & Encodable, after delay: Duration, key: String? = nil)
        -> ProcessAction
    {
        .schedule(command, at: .afterEvent(delay), key: key)
    }

    /// Dispatches `command` at `date`.
    public static func schedule(_ command: any Command & Encodable, at date: Date, key: String? = nil)
        -> ProcessAction
    {
        .schedule(command, at: .date(date), key: key)
    }
}

/// When a scheduled command comes due.
public enum ScheduleTime: Sendable, Hashable {
    /// This long after the triggering event was recorded (so a process manager that catches up
    /// after downtime keeps the original deadline).
    case afterEvent(Duration)
    /// At a fixed time.
    case date(Date)
}

/// A command that failed to dispatch.
public struct CommandFailure: Sendable {
    /// The stored command.
    public let command: OutboxCommand
    /// The error (a rejection, a store error...).
    public let error: any Error
    /// Attempts so far, this one included.
    public var attempts: Int { command.attempts + 1 }
}

/// What a process manager does about a command that failed.
public enum CommandFailureAction: Sendable, Hashable {
    /// Tries the command again after `delay`.
    case retry(after: Duration)
    /// Drops the command (logged and counted); the instance goes on.
    case skip
    /// Drops the command, deletes the instance and every command it still has pending.
    case stopInstance

    /// Retries up to 5 attempts with exponential backoff from 1 s, then skips; a rejection
    /// (the aggregate's business rule said no) is not retried but skipped at once.
    public static func defaultAction(for failure: CommandFailure) -> CommandFailureAction {
        if failure.error is any RejectionMarker { return .skip }
        guard failure.attempts < 5 else { return .skip }
        return .retry(after: .seconds(1 << min(failure.attempts - 1, 6)))
    }
}

/// Marks error types that are business rejections (never worth retrying). Rejections of
/// aggregates may adopt it so the default command failure action skips them at once.
public protocol RejectionMarker: Error {}

/// The metadata field naming the process manager that produced the command.
public let commandProcessField = "backstage.process"
