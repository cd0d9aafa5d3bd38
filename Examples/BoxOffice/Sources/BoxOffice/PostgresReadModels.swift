import Backstage
import BackstagePostgres
import Foundation
import Logging
import PostgresNIO

// The box office's read models on PostgreSQL: the same tables as the SQLite ones, kept in the
// store's schema (`box_office`) by PostgresProjections, so every process of the box office reads
// them and whichever process leads a projection fills them, exactly once.

private let sqlLogger = Logger(label: "box-office.read-models")

/// The `tickets` table on PostgreSQL: one row per ticket, with its show, status and buyer.
public struct PostgresTicketsReadModel: TypedPostgresReadModel {
    public typealias Family = ShowEvent
    public let name = "tickets"
    public let tables = ["tickets"]

    /// Creates the read model.
    public init() {}

    public func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        let t = try tables.table("tickets")
        try await connection.query(
            """
            CREATE TABLE \(unescaped: t) (
                ticket_id text PRIMARY KEY, show_id text NOT NULL, status text NOT NULL, buyer text,
                updated_at timestamptz NOT NULL)
            """, logger: sqlLogger)
        try await connection.query(
            "CREATE INDEX ON \(unescaped: t) (show_id, status)", logger: sqlLogger)
    }

    public func apply(_ event: Envelope<ShowEvent>, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        let t = try tables.table("tickets")
        let at = event.recordedAt
        switch event.event {
        case .ticketAdded(let e):
            try await connection.query(
                """
                INSERT INTO \(unescaped: t) (ticket_id, show_id, status, buyer, updated_at)
                VALUES (\(e.ticketID), \(e.showID), 'onSale', NULL, \(at))
                """, logger: sqlLogger)
        case .ticketSold(let e):
            try await connection.query(
                "UPDATE \(unescaped: t) SET status = 'sold', buyer = \(e.buyer), updated_at = \(at) WHERE ticket_id = \(e.ticketID)",
                logger: sqlLogger)
        case .ticketRefunded(let e):
            try await connection.query(
                "UPDATE \(unescaped: t) SET status = 'refunded', buyer = NULL, updated_at = \(at) WHERE ticket_id = \(e.ticketID)",
                logger: sqlLogger)
        case .scheduled: break
        }
    }
}

/// The `show_seats` table on PostgreSQL: seats available per show.
public struct PostgresSeatsReadModel: TypedPostgresReadModel {
    public typealias Family = ShowEvent
    public let name = "seats"
    public let tables = ["show_seats"]

    /// Creates the read model.
    public init() {}

    public func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        try await connection.query(
            """
            CREATE TABLE \(unescaped: try tables.table("show_seats")) (
                show_id text PRIMARY KEY, title text NOT NULL, capacity bigint NOT NULL,
                taken bigint NOT NULL, available bigint NOT NULL)
            """, logger: sqlLogger)
    }

    public func apply(_ event: Envelope<ShowEvent>, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        let t = try tables.table("show_seats")
        switch event.event {
        case .scheduled(let e):
            try await connection.query(
                """
                INSERT INTO \(unescaped: t) (show_id, title, capacity, taken, available)
                VALUES (\(e.showID), \(e.title), \(e.capacity), 0, \(e.capacity))
                """, logger: sqlLogger)
        case .ticketSold(let e):
            try await connection.query(
                "UPDATE \(unescaped: t) SET taken = taken + 1, available = available - 1 WHERE show_id = \(e.showID)",
                logger: sqlLogger)
        case .ticketRefunded(let e):
            try await connection.query(
                "UPDATE \(unescaped: t) SET taken = taken - 1, available = available + 1 WHERE show_id = \(e.showID)",
                logger: sqlLogger)
        case .ticketAdded: break
        }
    }
}

/// The `show_sales` table on PostgreSQL: sales per show.
public struct PostgresSalesReadModel: TypedPostgresReadModel {
    public typealias Family = ShowEvent
    public let name = "sales"
    public let tables = ["show_sales"]

    /// Creates the read model.
    public init() {}

    public func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        try await connection.query(
            """
            CREATE TABLE \(unescaped: try tables.table("show_sales")) (
                show_id text PRIMARY KEY, sold bigint NOT NULL, refunded bigint NOT NULL,
                net bigint NOT NULL, last_sale_at timestamptz)
            """, logger: sqlLogger)
    }

    public func apply(_ event: Envelope<ShowEvent>, on connection: PostgresConnection, tables: PostgresProjectionTables)
        async throws
    {
        let t = try tables.table("show_sales")
        switch event.event {
        case .ticketSold(let e):
            try await connection.query(
                """
                INSERT INTO \(unescaped: t) AS s (show_id, sold, refunded, net, last_sale_at)
                VALUES (\(e.showID), 1, 0, 1, \(event.recordedAt))
                ON CONFLICT (show_id) DO UPDATE
                SET sold = s.sold + 1, net = s.net + 1, last_sale_at = excluded.last_sale_at
                """, logger: sqlLogger)
        case .ticketRefunded(let e):
            try await connection.query(
                """
                INSERT INTO \(unescaped: t) AS s (show_id, sold, refunded, net) VALUES (\(e.showID), 0, 1, -1)
                ON CONFLICT (show_id) DO UPDATE SET refunded = s.refunded + 1, net = s.net - 1
                """, logger: sqlLogger)
        case .scheduled, .ticketAdded: break
        }
    }
}

/// Queries of the PostgreSQL read models, through the views of their active versions.
struct PostgresQueries: Sendable {
    let store: PostgresEventStore
    private var s: String { store.schema.rawValue }

    func seats(_ showID: String) async throws -> SeatsView? {
        let rows = try await store.client.query(
            "SELECT title, capacity, taken, available FROM \(unescaped: s).show_seats WHERE show_id = \(showID)")
        for try await (title, capacity, taken, available) in rows.decode((String, Int64, Int64, Int64).self) {
            return SeatsView(
                showID: showID, title: title, capacity: Int(capacity), taken: Int(taken), available: Int(available))
        }
        return nil
    }

    func sales(_ showID: String) async throws -> SalesView {
        let rows = try await store.client.query(
            "SELECT sold, refunded, net FROM \(unescaped: s).show_sales WHERE show_id = \(showID)")
        for try await (sold, refunded, net) in rows.decode((Int64, Int64, Int64).self) {
            return SalesView(showID: showID, sold: Int(sold), refunded: Int(refunded), net: Int(net))
        }
        return SalesView(showID: showID, sold: 0, refunded: 0, net: 0)
    }

    func ticketsByStatus(_ showID: String) async throws -> [String: Int] {
        let rows = try await store.client.query(
            "SELECT status, COUNT(*) FROM \(unescaped: s).tickets WHERE show_id = \(showID) GROUP BY status")
        var tickets: [String: Int] = [:]
        for try await (status, count) in rows.decode((String, Int64).self) { tickets[status] = Int(count) }
        return tickets
    }

    func totals() async throws -> (tickets: Int, shows: Int, netSales: Int) {
        let rows = try await store.client.query(
            """
            SELECT (SELECT COUNT(*) FROM \(unescaped: s).tickets), (SELECT COUNT(*) FROM \(unescaped: s).show_seats),
                   (SELECT COALESCE(SUM(net), 0)::bigint FROM \(unescaped: s).show_sales)
            """)
        for try await (tickets, shows, net) in rows.decode((Int64, Int64, Int64).self) {
            return (Int(tickets), Int(shows), Int(net))
        }
        return (0, 0, 0)
    }
}
