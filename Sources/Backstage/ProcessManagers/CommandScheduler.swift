import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// The wall-clock time the ``CommandScheduler`` runs on. Inject a test clock (BackstageTesting's
/// `TestClock`) so tests advance time instead of sleeping for it.
public protocol SchedulerClock: Sendable {
    /// The current time.
    func now() -> Date
    /// Returns at `deadline` (or at once when it has passed); throws `CancellationError` when cancelled.
    func sleep(until deadline: Date) async throws
}

/// The system's wall clock.
public struct SystemSchedulerClock: SchedulerClock {
    /// Creates the clock.
    public init() {}
    /// `Date()`.
    public func now() -> Date { Date() }
    /// Sleeps until `deadline`.
    public func sleep(until deadline: Date) async throws {
        let interval = deadline.timeIntervalSinceNow
        if interval > 0 { try await Task.sleep(for: .nanoseconds(Int64(min(interval, 86_400) * 1e9))) }
    }
}

/// The command types a ``CommandScheduler`` can dispatch from the outbox, by
/// ``Command/commandName``: register every `Codable` command a process manager (or your code)
/// schedules.
public struct CommandCatalog: Sendable {
    typealias Dispatch = @Sendable (Data, BackstageApp, DispatchOptions) async throws -> Void
    var entries: [String: Dispatch] = [:]

    /// An empty catalog.
    public init() {}

    /// Makes `type` dispatchable from the outbox.
    public mutating func register<C: Command & Codable>(_ type: C.Type) {
        entries[C.commandName] = { data, app, options in
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            let command = try decoder.decode(C.self, from: data)
            try await app.dispatch(command, options: options)
        }
    }

    /// A catalog of `types`.
    public static func of(_ types: [any (Command & Codable).Type]) -> CommandCatalog {
        var catalog = CommandCatalog()
        for type in types { catalog.add(type) }
        return catalog
    }

    private mutating func add<C: Command & Codable>(_ type: C.Type) { register(type) }

    /// The registered command names.
    public var commandNames: [String] { entries.keys.sorted() }
}

/// Errors of the command scheduler.
public enum CommandSchedulerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The outbox holds a command whose name is not in the ``CommandCatalog``.
    case unknownCommand(String)

    public var description: String {
        switch self {
        case .unknownCommand(let name):
            "the outbox holds a command '\(name)' the scheduler's CommandCatalog does not know: register it"
        }
    }
}

/// Dispatches the commands of the outbox when they come due: those process managers stored with
/// their batches, and those application code scheduled with `schedule(_:at:key:id:)`. Runs as a
/// swift-service-lifecycle `Service`.
///
/// A command is deleted from the outbox only after its dispatch; it is dispatched with its stored
/// command id, so the store's command idempotency makes a repeated dispatch (after a crash between
/// dispatch and delete) return the original result: exactly one effect. On PostgreSQL, several
/// processes may run a scheduler: each due command is claimed by exactly one of them. A command
/// that came due while no process ran is dispatched when one starts.
///
/// The events of a dispatched command carry its causation in the metadata field
/// ``commandCausationField`` (the triggering event's id) and the process name in
/// ``commandProcessField``; their correlation id is the command's (inherited from the trigger).
public final class CommandScheduler: Service, Sendable {
    /// The application that dispatches the commands.
    package let app: BackstageApp
    /// Where the outbox lives.
    package let store: any ProcessStore
    /// The command types it can decode.
    package let commands: CommandCatalog
    /// The clock deciding what is due.
    package let clock: any SchedulerClock
    private let failureHandlers: [String: any CommandFailureHandling]
    private let pollInterval: Duration
    private let batchSize: Int
    private let logger: Logger
    private let wake = Signal()
    private let stopped = Signal(sticky: true)
    private let stopping = Mutex(false)
    private let dispatchedCounter = Counter(label: "backstage.scheduler.dispatched")
    private let failedCounter = Counter(label: "backstage.scheduler.failures")

    /// Creates a scheduler.
    /// - Parameters:
    ///   - app: the app it dispatches the due commands through.
    ///   - store: the process store that holds the scheduled commands (the command outbox).
    ///   - commands: the command types it can decode from the outbox and dispatch.
    ///   - processManagers: the process managers whose commands it dispatches, asked what to do
    ///     when one of their commands fails (``ProcessManagerProjection`` conforms).
    ///   - clock: where the time comes from (BackstageTesting's `TestClock` in tests).
    ///   - pollInterval: how often it looks for commands stored by other processes.
    ///   - batchSize: how many due commands it reads at a time.
    ///   - logger: where it logs dispatches and failures.
    public init(
        app: BackstageApp, store: any ProcessStore, commands: CommandCatalog,
        processManagers: [any CommandFailureHandling] = [], clock: any SchedulerClock = SystemSchedulerClock(),
        pollInterval: Duration = .seconds(1), batchSize: Int = 100,
        logger: Logger = Logger(label: "backstage.scheduler")
    ) {
        self.app = app
        self.store = store
        self.commands = commands
        self.clock = clock
        self.failureHandlers = Dictionary(processManagers.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.pollInterval = pollInterval
        self.batchSize = max(batchSize, 1)
        self.logger = logger
    }

    // MARK: Scheduling from application code

    /// Schedules `command` for `date`. `key` names it for ``cancel(key:)``; `id` is its command id
    /// (a new one when nil; pass a stable one to make scheduling idempotent). Returns the id.
    @discardableResult
    public func schedule<C: Command & Encodable>(
        _ command: C, at date: Date, key: String? = nil, id: UUID? = nil, correlationID: UUID? = nil,
        causationID: UUID? = nil
    ) async throws -> UUID {
        let id = id ?? UUIDv7.next()
        try await store.schedule([
            OutboxCommand(
                id: id, commandName: C.commandName, data: try encodeCommand(command), causationID: causationID,
                correlationID: correlationID ?? id, dueAt: date, cancelKey: key, createdAt: clock.now())
        ])
        wake.signal()
        return id
    }

    /// Schedules `command` `delay` from now (by the scheduler's clock).
    @discardableResult
    public func schedule<C: Command & Encodable>(_ command: C, after delay: Duration, key: String? = nil)
        async throws -> UUID
    {
        try await schedule(command, at: clock.now().addingTimeInterval(delay.seconds), key: key)
    }

    /// Cancels every pending command with `key`; returns how many were cancelled.
    @discardableResult
    public func cancel(key: String) async throws -> Int {
        try await store.cancel(key: key)
    }

    /// The pending commands, earliest due first.
    public func pending(limit: Int = 100) async throws -> [OutboxCommand] {
        try await store.pending(limit: limit)
    }

    /// Wakes the scheduler to look for due commands now (after the test clock moved, say).
    public func poke() { wake.signal() }

    // MARK: Running

    /// Dispatches every command due now; returns how many it handled (dispatched, retried later or dropped).
    @discardableResult
    public func dispatchDue() async throws -> Int {
        var total = 0
        while true {
            let n = try await store.dispatchDue(now: clock.now(), limit: batchSize) { command in
                await self.dispatch(command)
            }
            total += n
            if n < batchSize { return total }
        }
    }

    /// Runs until graceful shutdown or cancellation: dispatches due commands, then waits for the
    /// next due time (by the clock), a ``poke()``, or the poll interval.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await self.loop()
            } onCancel: {
                self.stopped.signal()
            }
        } onGracefulShutdown: {
            self.stopped.signal()
        }
    }

    private func loop() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.stopped.wait()
                self.stopping.withLock { $0 = true }
                self.wake.signal()
            }
            group.addTask {
                while !self.stopping.withLock({ $0 }) {
                    var next: Date?
                    do {
                        try await self.dispatchDue()
                        next = try await self.store.nextDue()
                    } catch {
                        self.logger.error("the command scheduler failed to read its outbox: \(error)")
                    }
                    if self.stopping.withLock({ $0 }) { break }
                    await self.waitForWork(until: next)
                }
            }
            await group.next()
            await group.next()
        }
    }

    private func waitForWork(until next: Date?) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.wake.wait(timeout: self.pollInterval) }
            if let next {
                group.addTask { try? await self.clock.sleep(until: next) }
            }
            await group.next()
            group.cancelAll()
        }
    }

    private func dispatch(_ command: OutboxCommand) async -> OutboxOutcome {
        guard let dispatch = commands.entries[command.commandName] else {
            return failed(command, error: CommandSchedulerError.unknownCommand(command.commandName))
        }
        // The dispatch records the causation (the triggering event) under `commandCausationField`.
        var fields: [String: String] = [:]
        if !command.process.isEmpty { fields[commandProcessField] = command.process }
        let options = DispatchOptions(
            commandID: command.id, correlationID: command.correlationID, causationID: command.causationID,
            fields: fields)
        do {
            try await dispatch(command.data, app, options)
            dispatchedCounter.increment()
            logger.debug("dispatched \(command.commandName) \(command.id)")
            return .done
        } catch {
            return failed(command, error: error)
        }
    }

    private func failed(_ command: OutboxCommand, error: any Error) -> OutboxOutcome {
        failedCounter.increment()
        let failure = CommandFailure(command: command, error: error)
        let action =
            failureHandlers[command.process]?.commandFailed(failure) ?? CommandFailureAction.defaultAction(for: failure)
        let what = "\(command.commandName) \(command.id) (attempt \(failure.attempts))"
        switch action {
        case .retry(let delay):
            logger.warning("command \(what) failed; retrying in \(delay): \(error)")
            return .retry(at: clock.now().addingTimeInterval(delay.seconds), error: "\(error)")
        case .skip:
            logger.error("command \(what) failed and is skipped: \(error)")
            return .done
        case .stopInstance:
            logger.error(
                "command \(what) failed; process \(command.process) stops instance '\(command.instance)': \(error)")
            return .stopInstance
        }
    }
}
