import ArgumentParser
import Backstage
import BackstageConsole
import BoxOffice
import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `box-office`: the Backstage example application.
@main
struct BoxOfficeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "box-office",
        abstract: "The Backstage box office: shows, tickets, sales and refunds, event-sourced.",
        subcommands: [DemoCommand.self, ServeCommand.self, CatchUpCommand.self, AdminCommand.self])
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
            print("\n" + (try await ReservationDemo().run(on: app)))
        }
    }
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Serve the box office over HTTP, with its read models and receipt sender.",
        discussion: """
            The HTTP server, the read models (tickets, seats, sales), the receipt sender and the web \
            console (/console) run in one service group; SIGTERM or SIGINT stops the server, then the \
            pipelines, and exits 0. /health answers 200 while the store answers and no pipeline failed; \
            /metrics serves Prometheus metrics; /events streams the log as server-sent events.
            """)

    @OptionGroup var options: DatabaseOptions

    @Option(help: "The address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "The port to listen on (0: any free port; the line 'listening on HOST:PORT' tells which).")
    var port = 8080

    @Flag(
        help: """
            Let the web console replay and discard parked events (default: read-only). Only for a \
            console that operators alone can reach.
            """)
    var consoleActions = false

    @Option(help: "Every how many commands a receipt's first attempt fails (0: never), to show retries and parking.")
    var failEvery = 10

    @Option(
        help: """
            Store a snapshot of a show every N events (0: never), so reading a show (GET /shows/ID, the \
            console) replays at most N events.
            """)
    var snapshotEvery = 100

    @Option(
        help: """
            Split the receipt sender into this many partitions, shared by every box-office serve process \
            on the same PostgreSQL schema (1: one process sends every receipt). PostgreSQL only.
            """)
    var receiptPartitions = 1

    func validate() throws {
        guard receiptPartitions >= 1 else { throw ValidationError("--receipt-partitions must be at least 1") }
    }

    func run() async throws {
        // Metrics go to a Prometheus registry that /metrics serves. Every metric gets the label
        // service="box-office", so no metric family mixes labelled and unlabelled series.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(BoxOfficeAPI.metricsFactory(registry: registry))

        let database = try BoxOfficeDatabase.open(try options.location(), schema: options.schema)
        let logger = Logger(label: "box-office")
        var appConfiguration = BackstageApp.Configuration()
        appConfiguration.snapshotEvery = snapshotEvery > 0 ? snapshotEvery : nil
        let app = BackstageApp(store: database.store, router: try .boxOffice(), configuration: appConfiguration)
        let readModels = try await BoxOfficeReadModels(
            database: database, failEvery: failEvery, receiptPartitions: receiptPartitions)
        let pipelines = try readModels.pipelines(app: app)
        var configuration = BackstageConsole.Configuration()
        configuration.title = "Box office"
        configuration.actions = consoleActions ? .allowAll : .readOnly
        var console = BackstageConsole(app: app, pipelines: pipelines, configuration: configuration)
        console.register(Show.self)
        let server = BoxOfficeAPI.application(
            app: app, readModels: readModels, pipelines: pipelines, metrics: registry, console: console, host: host,
            port: port, logger: logger,
            onListening: { port in
                // One line on stdout, for scripts (and the tests) that start the server on port 0.
                FileHandle.standardOutput.write(Data("listening on \(host):\(port)\n".utf8))
            })
        // Services stop in reverse order: the server first (no new commands), then the reservation
        // desk and the pipelines, then the store (which runs first: on PostgreSQL it connects and
        // migrates the schema).
        let services: [any Service] =
            (database.service.map { [$0] } ?? []) + [pipelines, try ReservationDesk(app: app), server]
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
