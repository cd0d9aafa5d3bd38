import ArgumentParser
import Backstage
import BoxOffice
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// `box-office`: the Backstage example application.
@main
struct BoxOfficeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "box-office",
        abstract: "The Backstage box office: shows, tickets, sales and refunds, event-sourced.",
        subcommands: [DemoCommand.self, ServeCommand.self, CatchUpCommand.self])
}

/// Options shared by the subcommands.
struct DatabaseOptions: ParsableArguments {
    @Option(
        help: "The event store: an SQLite file path, sqlite:PATH, postgres://USER:PASSWORD@HOST:PORT/DB, or memory.")
    var database = "box-office.sqlite"

    @Option(help: "The PostgreSQL schema holding the events and the read models.")
    var schema = "box_office"

    func location() throws -> DatabaseLocation {
        do {
            return try DatabaseLocation(parsing: database)
        } catch {
            throw ValidationError(error.description)
        }
    }
}

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Dispatch thousands of commands concurrently and show what the event log knows.",
        discussion: "A second run on the same database continues the same shows from their stored history.")

    @OptionGroup var options: DatabaseOptions

    @Flag(help: "Delete the database first and start over.")
    var fresh = false

    @Option(help: "How many commands to dispatch.")
    var commands = 10_000

    @Option(help: "How many concurrent tasks dispatch them.")
    var tasks = 64

    func validate() throws {
        guard commands > 0 else { throw ValidationError("--commands must be positive") }
        guard tasks > 0 else { throw ValidationError("--tasks must be positive") }
    }

    func run() async throws {
        var demo = Demo()
        demo.commands = commands
        demo.tasks = tasks
        try await BoxOfficeDatabase.with(try options.location(), fresh: fresh, schema: options.schema) { database in
            let app = BackstageApp(store: database.store, router: try .boxOffice())
            print("Backstage box office on \(database.location)\n")
            // The read models (projections) and the receipt sender run next to the commands.
            let readModels = try BoxOfficeReadModels(store: database.store)
            let (report, readModelReport) = try await ReadModelReport.measure(
                readModels: readModels, app: app, sampleShow: "show-1"
            ) { try await demo.run(on: app) }
            print(report.text)
            print("\n" + readModelReport.text)
        }
    }
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Serve the box office over HTTP, with its read models and receipt sender.",
        discussion: """
            The HTTP server, the read models (tickets, seats, sales) and the receipt sender run in one \
            service group; SIGTERM or SIGINT stops the server, then the pipelines, and exits 0.
            """)

    @OptionGroup var options: DatabaseOptions

    @Option(help: "The address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "The port to listen on (0: any free port; the line 'listening on HOST:PORT' tells which).")
    var port = 8080

    func run() async throws {
        let database = try BoxOfficeDatabase.open(try options.location(), schema: options.schema)
        let logger = Logger(label: "box-office")
        let app = BackstageApp(store: database.store, router: try .boxOffice())
        let readModels = try await BoxOfficeReadModels(database: database)
        let pipelines = try readModels.pipelines(app: app)
        let server = BoxOfficeAPI.application(
            app: app, readModels: readModels, host: host, port: port, logger: logger,
            onListening: { port in
                // One line on stdout, for scripts (and the tests) that start the server on port 0.
                FileHandle.standardOutput.write(Data("listening on \(host):\(port)\n".utf8))
            })
        // Services stop in reverse order: the server first (no new commands), then the pipelines,
        // then the store (which runs first: on PostgreSQL it connects and migrates the schema).
        let services: [any Service] = (database.service.map { [$0] } ?? []) + [pipelines, server]
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        logger.info("serving the box office on \(database.location)")
        defer { logger.info("stopped") }
        do {
            try await group.run()
        } catch {
            try? await readModels.close()
            throw error
        }
        try await readModels.close()
    }
}
