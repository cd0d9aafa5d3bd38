import ArgumentParser
import Backstage
import Foundation
import Synchronization

/// The `backstage` operations tool, as a library: its commands (`streams`, `read`, `events`,
/// `tail`, `subscriptions`, `parked`, `rebuild`, `stats`, `export`) over any SQLite file or
/// PostgreSQL schema.
///
/// The `backstage` executable is this tool with nothing registered. An application embeds it
/// with its own handlers and projections, so that `rebuild` and `parked replay` can run them:
///
/// ```swift
/// let tool = BackstageTool(commandName: "box-office admin") { store in
///     try PipelineService(store: store, handlers: [ReceiptSender()], projections: [tickets(store)])
/// }
/// exit(await tool.run(Array(CommandLine.arguments.dropFirst(2))))
/// ```
public struct BackstageTool: Sendable {
    /// Builds the application's `PipelineService` over the store the tool opened: the same
    /// handlers and projections the application runs. The tool never runs the service; it uses
    /// it to rebuild projections and replay parked events, and reads its subscriptions' filters.
    public typealias Pipelines = @Sendable (_ store: any EventStore) async throws -> PipelineService

    /// The name shown in messages and help (`backstage`, or the application's command).
    public var commandName: String
    /// The store used when a command gets no `--store` (nor `BACKSTAGE_STORE`): the
    /// application's own, for example.
    public var defaultStore: String?
    /// The PostgreSQL schema used when a command gets no `--schema` (default: `backstage`).
    public var defaultSchema: String?
    /// The application's pipelines (nil in the plain `backstage` executable).
    public var pipelines: Pipelines?

    /// Creates the tool.
    public init(
        commandName: String = "backstage", defaultStore: String? = nil, defaultSchema: String? = nil,
        pipelines: Pipelines? = nil
    ) {
        self.commandName = commandName
        self.defaultStore = defaultStore
        self.defaultSchema = defaultSchema
        self.pipelines = pipelines
    }

    /// Parses `arguments` (without the program name) and runs the command; returns the exit
    /// status: 0 on success, 1 after an error (one line on standard error), 64 for a usage error.
    public func run(_ arguments: [String], output: CommandOutput = .standard) async -> Int32 {
        let context = ToolContext(tool: self, output: output)
        return await ToolContext.$current.withValue(context) {
            let command: any ParsableCommand
            do {
                command = try BackstageCommand.parseAsRoot(arguments)
            } catch {
                return report(parseError: error, output: output)
            }
            do {
                if var async = command as? any AsyncParsableCommand {
                    try await async.run()
                } else {
                    var sync = command
                    try sync.run()
                }
                return 0
            } catch let error as ExitCode {
                return error.rawValue
            } catch is CleanExit {
                return report(parseError: CleanExit.helpRequest(), output: output)
            } catch is CancellationError {
                output.error("\(commandName): interrupted\n")
                return 130
            } catch let error as ValidationError {
                return report(parseError: error, output: output)
            } catch {
                // Help asked of a command group (ArgumentParser reports it as an error of its own).
                if BackstageCommand.exitCode(for: error) == .success {
                    return report(parseError: error, output: output)
                }
                output.error("\(commandName): error: \(oneLine(error))\n")
                return 1
            }
        }
    }

    private func report(parseError error: any Error, output: CommandOutput) -> Int32 {
        let code = BackstageCommand.exitCode(for: error)
        var message = BackstageCommand.fullMessage(for: error)
        if commandName != "backstage" {
            message = message.replacingOccurrences(of: "backstage ", with: "\(commandName) ")
        }
        if code == .success {
            output.write(message + "\n")
        } else {
            output.error(message + "\n")
        }
        return code.rawValue
    }

    /// Runs the command in the process's arguments and exits with its status.
    public func main() async -> Never {
        let status = await run(Array(CommandLine.arguments.dropFirst()))
        exit(status)
    }
}

/// Where the tool writes: standard output for results, standard error for progress and errors.
public struct CommandOutput: Sendable {
    /// Writes result text.
    public var write: @Sendable (String) -> Void
    /// Writes an error or progress text.
    public var error: @Sendable (String) -> Void
    /// Whether standard error is a terminal: progress is only shown then.
    public var errorIsTerminal: Bool

    /// Creates an output.
    public init(
        write: @escaping @Sendable (String) -> Void, error: @escaping @Sendable (String) -> Void,
        errorIsTerminal: Bool = false
    ) {
        self.write = write
        self.error = error
        self.errorIsTerminal = errorIsTerminal
    }

    /// The process's standard output and error.
    public static var standard: CommandOutput {
        CommandOutput(
            write: { text in FileHandle.standardOutput.write(Data(text.utf8)) },
            error: { text in FileHandle.standardError.write(Data(text.utf8)) },
            errorIsTerminal: isatty(STDERR_FILENO) == 1)
    }

    /// An output that keeps what is written, for tests.
    public static func capturing() -> (CommandOutput, CapturedOutput) {
        let captured = CapturedOutput()
        return (
            CommandOutput(
                write: { text in captured.state.withLock { $0.out += text } },
                error: { text in captured.state.withLock { $0.err += text } }),
            captured
        )
    }
}

/// What a ``CommandOutput/capturing()`` output received.
public final class CapturedOutput: Sendable {
    let state = Mutex<(out: String, err: String)>(("", ""))

    /// The text written to standard output.
    public var standardOutput: String { state.withLock { $0.out } }
    /// The text written to standard error.
    public var standardError: String { state.withLock { $0.err } }
}

/// The tool and output of the command running in this task.
struct ToolContext: Sendable {
    let tool: BackstageTool
    let output: CommandOutput

    @TaskLocal static var current: ToolContext?

    static var required: ToolContext {
        get throws {
            guard let current else { throw ToolError("the command ran outside BackstageTool.run") }
            return current
        }
    }
}

/// An error of the tool: its message is printed as is.
struct ToolError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `error` in one line.
func oneLine(_ error: any Error) -> String {
    String(describing: error).split(whereSeparator: \.isNewline).joined(separator: " ")
}
