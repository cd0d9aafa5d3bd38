import Foundation
import Logging

/// What a middleware sees of a command being dispatched.
public struct CommandContext: Sendable {
    /// The command.
    public let command: any Command
    /// The command's stable name.
    public let commandName: String
    /// The command's id (stored with every event it produces; makes retries idempotent).
    public let commandID: UUID
    /// The stream of the aggregate instance the command goes to.
    public let stream: String
    /// The id shared by everything that follows from one original request.
    public var correlationID: UUID
    /// The message that caused this command, if any.
    public var causationID: UUID?
    /// Free-form fields stored in the metadata of every event the command produces.
    public var fields: [String: String]
}

/// Runs around every dispatch: before (may reject by throwing), after success, after failure.
public protocol Middleware: Sendable {
    /// Runs before the command reaches its aggregate; throw to reject it. May add metadata fields.
    func beforeDispatch(_ context: inout CommandContext) async throws
    /// Runs after the command's events were stored (or it decided no events).
    func afterDispatch(_ context: CommandContext, result: DispatchSummary) async
    /// Runs after the command failed, with the error the caller receives.
    func afterFailure(_ context: CommandContext, error: any Error) async
}

extension Middleware {
    /// Does nothing.
    public func beforeDispatch(_ context: inout CommandContext) async throws {}
    /// Does nothing.
    public func afterDispatch(_ context: CommandContext, result: DispatchSummary) async {}
    /// Does nothing.
    public func afterFailure(_ context: CommandContext, error: any Error) async {}
}

/// What a dispatch did, without the aggregate's types.
public struct DispatchSummary: Sendable, Hashable {
    /// The number of events stored (0 when the command decided none, or was a duplicate).
    public var eventCount: Int
    /// The stream's version after the command.
    public var version: Int64
    /// True when the command id was already stored and the original result was returned.
    public var isDuplicate: Bool
    /// Conflicts that were retried.
    public var retries: Int
}

/// A command that can check its own input before it reaches the aggregate.
public protocol ValidatableCommand: Command {
    /// Throws when the command's input is not valid.
    func validate() throws
}

/// Rejects commands whose ``ValidatableCommand/validate()`` throws, before any aggregate is loaded.
public struct ValidationMiddleware: Middleware {
    /// Creates the middleware.
    public init() {}

    public func beforeDispatch(_ context: inout CommandContext) async throws {
        if let command = context.command as? any ValidatableCommand { try command.validate() }
    }
}

/// Logs every dispatch: debug on success, warning on failure, with the command id and stream.
public struct LoggingMiddleware: Middleware {
    let logger: Logger

    /// Logs to `logger`.
    public init(logger: Logger) { self.logger = logger }

    public func afterDispatch(_ context: CommandContext, result: DispatchSummary) async {
        logger.debug(
            "dispatched \(context.commandName)",
            metadata: [
                "command_id": "\(context.commandID)", "stream": "\(context.stream)",
                "events": "\(result.eventCount)", "version": "\(result.version)",
                "retries": "\(result.retries)", "duplicate": "\(result.isDuplicate)",
            ])
    }

    public func afterFailure(_ context: CommandContext, error: any Error) async {
        logger.warning(
            "command \(context.commandName) failed: \(error)",
            metadata: ["command_id": "\(context.commandID)", "stream": "\(context.stream)"])
    }
}
