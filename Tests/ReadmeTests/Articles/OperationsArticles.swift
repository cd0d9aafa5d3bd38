// The code of the command-line article (BackstageCLI.docc/CommandLine.md) and of the
// partitioned-subscriptions article (Backstage.docc/Partitions.md).
import ArgumentParser
import Backstage
import BackstageCLI
import BackstagePostgres
import Foundation
import PostgresNIO
import Testing

struct ReceiptSender: EventHandler {
    let name = "receipts"
    // 8 partitions by stream (the default key; `.category` also works).
    let options = HandlerOptions(partitions: 8)
    func handle(_ event: RecordedEvent) async throws { /* call the mail API */  }
}

/// The read model the partitions article splits (tickets added per show).
struct TicketsReadModel: TypedPostgresReadModel {
    let name = "tickets"
    let tables = ["tickets"]
    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        try await connection.query(
            "CREATE TABLE \(unescaped: try tables.table("tickets")) (id text PRIMARY KEY, show text)",
            logger: Logger(label: "tickets"))
    }
    func apply(_ envelope: Envelope<ShowEvent>, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        guard case .ticketAdded(let added) = envelope.event else { return }
        try await connection.query(
            "INSERT INTO \(unescaped: try tables.table("tickets")) VALUES (\(added.ticketID), \(added.showID))",
            logger: Logger(label: "tickets"))
    }
}

func partitionedTickets(store: PostgresEventStore) throws -> PostgresProjection<TicketsReadModel> {
    var options = ProjectionOptions(batchSize: 100, partitions: 4)
    options.partitionKey = .stream
    let projection = try PostgresProjection(TicketsReadModel(), store: store, options: options)
    return projection
}

/// The projection the CLI article's application registers.
func ticketsProjection(_ store: any EventStore) throws -> any Projection {
    try InMemoryProjection(name: "tickets", consuming: ShowEvent.self, initial: 0) { count, envelope in
        if case .ticketAdded = envelope.event { count += 1 }
    }
}

struct AdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "admin")

    @Argument(parsing: .captureForPassthrough)
    var arguments: [String] = []

    func run() async throws {
        let tool = BackstageTool(commandName: "my-app admin", defaultStore: "my-app.sqlite") { store in
            try PipelineService(store: store, handlers: [ReceiptSender()], projections: [try ticketsProjection(store)])
        }
        let status = await tool.run(arguments)
        if status != 0 { throw ExitCode(status) }
    }
}

func inspect(_ store: any EventStore) async throws -> (StreamPage, [SubscriptionInfo], EventStatistics) {
    let inspector = store.inspector
    let page = try await inspector.streams(category: "show", after: nil, limit: 50)
    let lagging = try await inspector.subscriptions().filter { $0.lagEvents > 1_000 }
    let stats = try await inspector.statistics(category: nil)
    return (page, lagging, stats)
}

@Suite("Article: operations")
struct OperationsArticles {
    @Test("the inspection calls of the command-line article answer on the in-memory store")
    func inspection() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try showRouter())
        try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 2))
        let (page, lagging, stats) = try await inspect(app.store)
        #expect(page.streams.map(\.stream) == ["show-hamlet"])
        #expect(lagging.isEmpty)
        #expect(stats.byType.map(\.type) == ["ShowScheduled"])
    }

    @Test("the embedded tool's command parses its passthrough arguments")
    func adminParses() throws {
        let command = try AdminCommand.parse(["streams", "--json"])
        #expect(command.arguments == ["streams", "--json"])
        #expect(ReceiptSender().options.partitions == 8)
    }
}
