import ArgumentParser
import Backstage
import BackstageCLI
import BoxOffice

/// `box-office admin ...`: the `backstage` operations tool with the box office's read models and
/// receipt sender registered, so that `rebuild` and `parked replay` run them.
struct AdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract:
            "Operate the box office's event store: streams, events, tail, subscriptions, parked, rebuild, stats, export.",
        discussion: """
            The backstage tool with the box office's projections and handlers registered. \
            Example: box-office admin subscriptions --store box-office.sqlite; box-office admin rebuild tickets. \
            See `box-office admin help` for every command.
            """)

    @Argument(parsing: .captureForPassthrough, help: "The backstage command and its options.")
    var arguments: [String] = []

    func run() async throws {
        let tool = BackstageTool(
            commandName: "box-office admin", defaultStore: "box-office.sqlite", defaultSchema: "box_office"
        ) { store in
            let readModels = try BoxOfficeReadModels(store: store)
            return try PipelineService(
                store: store, handlers: [readModels.receipts], projections: readModels.projections)
        }
        let status = await tool.run(arguments)
        if status != 0 { throw ExitCode(status) }
    }
}
