import Backstage
import BackstagePostgres
import BackstageSQLite
import Foundation
import GRDB
import Logging
import Synchronization

// Read models of the box office: tables kept up to date from the event log, exactly once, by
// projections; and an event handler that sends receipts. They run in a PipelineService next to
// the application.

/// The `tickets` table: one row per ticket, with its show, status and buyer.
public struct TicketsReadModel: TypedSQLiteReadModel {
    public typealias Family = ShowEvent
    public let name = "tickets"
    public let tables = ["tickets"]
    public let filter = EventFilter(types: [TicketAdded.typeName, TicketSold.typeName, TicketRefunded.typeName])

    /// Creates the read model.
    public init() {}

    public func createTables(in db: Database, tables: ProjectionTables) throws {
        let t = try tables.table("tickets")
        try db.execute(
            sql: """
                CREATE TABLE \(t) (
                    ticket_id TEXT PRIMARY KEY, show_id TEXT NOT NULL, status TEXT NOT NULL, buyer TEXT,
                    updated_at REAL NOT NULL);
                CREATE INDEX \(t)_show ON \(t) (show_id, status);
                """)
    }

    public func apply(_ event: Envelope<ShowEvent>, in db: Database, tables: ProjectionTables) throws {
        let t = try tables.table("tickets")
        let at = event.recordedAt.timeIntervalSince1970
        switch event.event {
        case .ticketAdded(let e):
            try db.executeCached(
                sql:
                    "INSERT INTO \(t) (ticket_id, show_id, status, buyer, updated_at) VALUES (?, ?, 'onSale', NULL, ?)",
                arguments: [e.ticketID, e.showID, at])
        case .ticketSold(let e):
            try db.executeCached(
                sql: "UPDATE \(t) SET status = 'sold', buyer = ?, updated_at = ? WHERE ticket_id = ?",
                arguments: [e.buyer, at, e.ticketID])
        case .ticketRefunded(let e):
            try db.executeCached(
                sql: "UPDATE \(t) SET status = 'refunded', buyer = NULL, updated_at = ? WHERE ticket_id = ?",
                arguments: [at, e.ticketID])
        case .scheduled: break
        }
    }
}

/// The `show_seats` table: seats available per show (capacity minus tickets sold and not refunded).
public struct SeatsReadModel: TypedSQLiteReadModel {
    public typealias Family = ShowEvent
    public let name = "seats"
    public let tables = ["show_seats"]
    public let filter = EventFilter(types: [ShowScheduled.typeName, TicketSold.typeName, TicketRefunded.typeName])

    /// Creates the read model.
    public init() {}

    public func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql: """
                CREATE TABLE \(try tables.table("show_seats")) (
                    show_id TEXT PRIMARY KEY, title TEXT NOT NULL, capacity INTEGER NOT NULL,
                    taken INTEGER NOT NULL, available INTEGER NOT NULL)
                """)
    }

    public func apply(_ event: Envelope<ShowEvent>, in db: Database, tables: ProjectionTables) throws {
        let t = try tables.table("show_seats")
        switch event.event {
        case .scheduled(let e):
            try db.executeCached(
                sql: "INSERT INTO \(t) (show_id, title, capacity, taken, available) VALUES (?, ?, ?, 0, ?)",
                arguments: [e.showID, e.title, e.capacity, e.capacity])
        case .ticketSold(let e):
            try db.executeCached(
                sql: "UPDATE \(t) SET taken = taken + 1, available = available - 1 WHERE show_id = ?",
                arguments: [e.showID])
        case .ticketRefunded(let e):
            try db.executeCached(
                sql: "UPDATE \(t) SET taken = taken - 1, available = available + 1 WHERE show_id = ?",
                arguments: [e.showID])
        case .ticketAdded: break
        }
    }
}

/// The `show_sales` table: sales per show (sold, refunded, net).
public struct SalesReadModel: TypedSQLiteReadModel {
    public typealias Family = ShowEvent
    public let name = "sales"
    public let tables = ["show_sales"]
    public let filter = EventFilter(types: [TicketSold.typeName, TicketRefunded.typeName])

    /// Creates the read model.
    public init() {}

    public func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql: """
                CREATE TABLE \(try tables.table("show_sales")) (
                    show_id TEXT PRIMARY KEY, sold INTEGER NOT NULL, refunded INTEGER NOT NULL,
                    net INTEGER NOT NULL, last_sale_at REAL)
                """)
    }

    public func apply(_ event: Envelope<ShowEvent>, in db: Database, tables: ProjectionTables) throws {
        let t = try tables.table("show_sales")
        switch event.event {
        case .ticketSold(let e):
            try db.executeCached(
                sql: """
                    INSERT INTO \(t) (show_id, sold, refunded, net, last_sale_at) VALUES (?, 1, 0, 1, ?)
                    ON CONFLICT (show_id) DO UPDATE SET sold = sold + 1, net = net + 1, last_sale_at = excluded.last_sale_at
                    """, arguments: [e.showID, event.recordedAt.timeIntervalSince1970])
        case .ticketRefunded(let e):
            try db.executeCached(
                sql: """
                    INSERT INTO \(t) (show_id, sold, refunded, net) VALUES (?, 0, 1, -1)
                    ON CONFLICT (show_id) DO UPDATE SET refunded = refunded + 1, net = net - 1
                    """, arguments: [e.showID])
        case .scheduled, .ticketAdded: break
        }
    }
}

extension Database {
    /// Runs `sql` through a statement compiled once per connection.
    fileprivate func executeCached(sql: String, arguments: StatementArguments) throws {
        try cachedStatement(sql: sql).execute(arguments: arguments)
    }
}

/// Sends a receipt for every ticket sold. The mail server of the demo is flaky: the first attempt
/// of every `failEvery`-th receipt fails, and the retry policy sends it on a later attempt.
public final class TicketHandler: TypedEventHandler {
    public typealias Family = ShowEvent
    private struct State {
        var attempts: [String: Int] = [:]
        var sent = 0
        var transientFailures = 0
        var seen = 0
    }
    public let name = "receipts"
    public let filter = EventFilter(types: [TicketSold.typeName])
    /// Four senders, retried from 10 ms with backoff and jitter, parked after 5 retries.
    public let options: HandlerOptions
    private let failEvery: Int
    private let state = Mutex(State())

    /// A receipt sender whose first attempt fails for every `failEvery`-th receipt (0: never).
    /// With `partitions > 1` (PostgreSQL) its work is split into that many partitions by show,
    /// shared by every process that runs it (see the Partitions article).
    public init(failEvery: Int = 10, partitions: Int = 1) {
        self.failEvery = failEvery
        var options = HandlerOptions(
            concurrency: 4,
            failurePolicy: FailurePolicy(maxRetries: 5, initialBackoff: .milliseconds(10), maxBackoff: .seconds(1)))
        options.checkpointInterval = .milliseconds(50)
        options.partitions = partitions
        self.options = options
    }

    /// Receipts sent.
    public var sent: Int { state.withLock { $0.sent } }
    /// Attempts that failed and were retried.
    public var transientFailures: Int { state.withLock { $0.transientFailures } }

    public func handle(_ event: Envelope<ShowEvent>) async throws {
        guard case .ticketSold(let sold) = event.event else { return }
        let key = "\(event.position)"
        let fail = state.withLock { s -> Bool in
            let attempt = s.attempts[key, default: 0] + 1
            s.attempts[key] = attempt
            if attempt == 1 { s.seen += 1 }
            guard failEvery > 0, attempt == 1, s.seen % failEvery == 0 else {
                s.attempts[key] = nil
                s.sent += 1
                return false
            }
            s.transientFailures += 1
            return true
        }
        if fail { throw ReceiptError(ticketID: sold.ticketID) }
    }
}

/// The demo mail server was busy.
public struct ReceiptError: Error, CustomStringConvertible {
    /// The ticket whose receipt was not sent.
    public var ticketID: String
    public var description: String { "mail server busy: receipt for \(ticketID) not sent" }
}

/// The box office's read models and receipt handler, ready to run next to an application.
///
/// On the SQLite store the tables live in the store's file; on PostgreSQL in the store's schema
/// (typed ``PostgresTicketsReadModel`` and friends run by `PostgresProjection`); on the in-memory
/// store in an in-memory SQLite database.
public struct BoxOfficeReadModels: Sendable {
    private enum Backend: Sendable {
        case sqlite(any DatabaseWriter)
        case postgres(PostgresQueries)
    }
    private let backend: Backend
    /// The SQLite database holding the tables; nil on PostgreSQL.
    public var database: (any DatabaseWriter)? {
        if case .sqlite(let database) = backend { database } else { nil }
    }
    /// The projections: tickets, seats, sales.
    public let projections: [any Projection]
    /// The receipt sender.
    public let receipts: TicketHandler

    /// Read models in the store's database: its SQLite file, its PostgreSQL schema, or an
    /// in-memory SQLite database for the in-memory store.
    /// `receiptPartitions > 1` splits the receipt sender into partitions shared by every process
    /// running it (PostgreSQL only).
    public init(
        store: any EventStore, options: ProjectionOptions = ProjectionOptions(), failEvery: Int = 10,
        receiptPartitions: Int = 1
    ) throws {
        if let store = store as? PostgresEventStore {
            self.backend = .postgres(PostgresQueries(store: store))
            self.projections = [
                try PostgresProjection(PostgresTicketsReadModel(), store: store, options: options),
                try PostgresProjection(PostgresSeatsReadModel(), store: store, options: options),
                try PostgresProjection(PostgresSalesReadModel(), store: store, options: options),
            ]
        } else {
            let database: any DatabaseWriter = try (store as? SQLiteEventStore)?.database ?? DatabaseQueue()
            self.backend = .sqlite(database)
            self.projections = [
                try SQLiteProjection(TicketsReadModel(), database: database, options: options),
                try SQLiteProjection(SeatsReadModel(), database: database, options: options),
                try SQLiteProjection(SalesReadModel(), database: database, options: options),
            ]
        }
        self.receipts = TicketHandler(failEvery: failEvery, partitions: receiptPartitions)
    }

    /// The read models for an opened box-office database.
    public init(
        database: BoxOfficeDatabase, options: ProjectionOptions = ProjectionOptions(), failEvery: Int = 10,
        receiptPartitions: Int = 1
    ) async throws {
        try self.init(
            store: database.store, options: options, failEvery: failEvery, receiptPartitions: receiptPartitions)
    }

    /// Releases what the read models hold (nothing: their tables live in the store's database,
    /// closed with it).
    public func close() async throws {}

    /// A pipeline service over the app's store running the projections and the receipt sender.
    ///
    /// It gets the store's durable pipeline defaults (`EventStore.pipelineDefaults`): on SQLite the
    /// receipt sender's checkpoint, its parked receipts and the leases live in the store's file, on
    /// PostgreSQL in its schema with lease leadership, so a restart sends no receipt twice and only
    /// one process sends them; the read models' tables, checkpoints and leases live there too.
    public func pipelines(
        app: BackstageApp, receipts: Bool = true, logger: Logger = Logger(label: "box-office.pipelines")
    ) throws -> PipelineService {
        try PipelineService(
            app: app, handlers: receipts ? [self.receipts] : [], projections: projections, logger: logger)
    }

    /// One show as the read models see it.
    public struct ShowRow: Sendable, Hashable {
        /// The show.
        public var showID: String
        /// Seats.
        public var capacity: Int
        /// Seats not sold.
        public var available: Int
        /// Tickets sold, refunded, and net sales.
        public var sold: Int, refunded: Int, net: Int
        /// Rows of the `tickets` table for the show, by status.
        public var tickets: [String: Int]
    }

    /// The read models' view of one show.
    public func show(_ showID: String) async throws -> ShowRow? {
        guard let seats = try await seats(showID) else { return nil }
        let sales = try await sales(showID)
        let tickets: [String: Int]
        switch backend {
        case .postgres(let queries):
            tickets = try await queries.ticketsByStatus(showID)
        case .sqlite(let database):
            tickets = try await database.read { db in
                var tickets: [String: Int] = [:]
                for row in try Row.fetchAll(
                    db, sql: "SELECT status, COUNT(*) FROM tickets WHERE show_id = ? GROUP BY status",
                    arguments: [showID])
                {
                    tickets[row[0]] = row[1]
                }
                return tickets
            }
        }
        return ShowRow(
            showID: showID, capacity: seats.capacity, available: seats.available, sold: sales.sold,
            refunded: sales.refunded, net: sales.net, tickets: tickets)
    }

    /// Seats of one show, from the `show_seats` table; nil before the show's `ShowScheduled` is projected.
    public func seats(_ showID: String) async throws -> SeatsView? {
        switch backend {
        case .postgres(let queries): return try await queries.seats(showID)
        case .sqlite(let database):
            return try await database.read { db in
                try Row.fetchOne(
                    db, sql: "SELECT title, capacity, taken, available FROM show_seats WHERE show_id = ?",
                    arguments: [showID]
                ).map { SeatsView(showID: showID, title: $0[0], capacity: $0[1], taken: $0[2], available: $0[3]) }
            }
        }
    }

    /// Sales of one show, from the `show_sales` table (zeros before its first sale is projected).
    public func sales(_ showID: String) async throws -> SalesView {
        switch backend {
        case .postgres(let queries): return try await queries.sales(showID)
        case .sqlite(let database):
            return try await database.read { db in
                try Row.fetchOne(
                    db, sql: "SELECT sold, refunded, net FROM show_sales WHERE show_id = ?", arguments: [showID]
                ).map { SalesView(showID: showID, sold: $0[0], refunded: $0[1], net: $0[2]) }
                    ?? SalesView(showID: showID, sold: 0, refunded: 0, net: 0)
            }
        }
    }

    /// Totals over every show: tickets rows, shows, net sales.
    public func totals() async throws -> (tickets: Int, shows: Int, netSales: Int) {
        switch backend {
        case .postgres(let queries): return try await queries.totals()
        case .sqlite(let database):
            return try await database.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM tickets") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM show_seats") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(net), 0) FROM show_sales") ?? 0
                )
            }
        }
    }
}

/// What the read models looked like after a demo, and how far behind they were.
public struct ReadModelReport: Sendable {
    /// The largest lag (events) any projection had while the demo ran.
    public var maxLagEvents: Int64
    /// Lag (events) when the last command returned, per projection.
    public var lagAtEnd: [String: Int64]
    /// Time from the last command to every projection reaching the head of the log.
    public var catchUp: Duration
    /// One show.
    public var show: BoxOfficeReadModels.ShowRow?
    /// Totals.
    public var tickets: Int, shows: Int, netSales: Int
    /// Receipts sent and transient failures retried.
    public var receiptsSent: Int, receiptRetries: Int
    /// Parked receipts.
    public var parked: Int

    /// Runs `body` (the demo) with the read models' pipelines running, then waits for them to
    /// catch up and reports.
    public static func measure<T: Sendable>(
        readModels: BoxOfficeReadModels, app: BackstageApp, sampleShow: String,
        _ body: () async throws -> T
    ) async throws -> (T, ReadModelReport) {
        // Retries are logged as warnings; the demo counts them in its report instead.
        var logger = Logger(label: "box-office.pipelines")
        logger.logLevel = .error
        let pipelines = try readModels.pipelines(app: app, logger: logger)
        let maxLag = LagSampler()
        // The pipelines and the lag sampler are child tasks: however the demo ends, they are
        // stopped and awaited before this returns.
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await pipelines.run() }
            group.addTask { await maxLag.sample(pipelines) }
            do {
                let result = try await body()
                let end = ContinuousClock.now
                var atEnd: [String: Int64] = [:]
                for status in pipelines.status() where status.subscription.contains("@") {
                    atEnd[status.name] = max(
                        0, (try await app.store.headPosition()).position - (status.checkpoint?.position ?? 0))
                }
                try await pipelines.waitUntilProcessed(timeout: .seconds(120))
                let catchUp = ContinuousClock.now - end
                maxLag.finish()
                let parked = try await pipelines.parkedEvents().count
                pipelines.stop()
                try await group.waitForAll()
                let totals = try await readModels.totals()
                let report = ReadModelReport(
                    maxLagEvents: max(maxLag.largest, atEnd.values.max() ?? 0), lagAtEnd: atEnd, catchUp: catchUp,
                    show: try await readModels.show(sampleShow), tickets: totals.tickets, shows: totals.shows,
                    netSales: totals.netSales, receiptsSent: readModels.receipts.sent,
                    receiptRetries: readModels.receipts.transientFailures, parked: parked)
                return (result, report)
            } catch {
                maxLag.finish()
                pipelines.stop()
                try? await group.waitForAll()
                throw error
            }
        }
    }

    /// The report, as printed by `box-office demo`.
    public var text: String {
        let ms = Double(catchUp.components.seconds) * 1e3 + Double(catchUp.components.attoseconds) / 1e15
        var lines = [
            "Read models (projections tickets, seats, sales; exactly once, in the store's database):",
            "  tickets table: \(tickets) rows; shows: \(shows); net sales: \(netSales)",
        ]
        if let show {
            let statuses = show.tickets.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(
                separator: ", ")
            lines.append(
                "  \(show.showID): \(show.available) of \(show.capacity) seats available; sold \(show.sold), "
                    + "refunded \(show.refunded), net \(show.net); tickets: \(statuses)")
        }
        let endLag = lagAtEnd.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        lines += [
            "  projection lag: at most \(maxLagEvents) events behind during the run; \(endLag) when the last command "
                + "returned; caught up \(String(format: "%.1f", ms)) ms later",
            "Receipts (TicketHandler): \(receiptsSent) sent, \(receiptRetries) transient failures retried, \(parked) parked",
        ]
        return lines.joined(separator: "\n")
    }
}

/// The largest lag (events) of the projections, sampled every 20 ms until ``finish()``.
private final class LagSampler: Sendable {
    private let state = Mutex<(largest: Int64, finished: Bool)>((0, false))

    var largest: Int64 { state.withLock { $0.largest } }

    func finish() { state.withLock { $0.finished = true } }

    func sample(_ pipelines: PipelineService) async {
        while !state.withLock({ $0.finished }) {
            let lag = pipelines.status().filter { $0.subscription.contains("@") }.map(\.lagEvents).max() ?? 0
            state.withLock { $0.largest = max($0.largest, lag) }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// A row of the `show_seats` read model, as `GET /shows/{id}/seats` answers it.
public struct SeatsView: Codable, Sendable, Hashable {
    /// The show.
    public var showID: String
    /// Its title.
    public var title: String
    /// Seats, seats taken (sold and not refunded), seats available.
    public var capacity: Int, taken: Int, available: Int
}

/// A row of the `show_sales` read model, as `GET /shows/{id}/sales` answers it.
public struct SalesView: Codable, Sendable, Hashable {
    /// The show.
    public var showID: String
    /// Tickets sold, tickets refunded, net sales.
    public var sold: Int, refunded: Int, net: Int
}
