import Backstage
import Foundation
import Logging
import NIOSSL
import PostgresNIO

extension PostgresEventStore: InspectableEventStore {
    /// An inspector that answers in SQL over this store's schema (`PostgresInspector`).
    public func makeInspector() -> any StoreInspector { PostgresInspector(store: self) }
}

/// Inspection of a ``PostgresEventStore`` in SQL: streams from the `streams` table, subscriptions
/// from the checkpoint, lease and parked-event tables and the lease advisory locks in `pg_locks`,
/// statistics grouped in PostgreSQL.
struct PostgresInspector: StoreInspector {
    let postgres: PostgresEventStore

    init(store: PostgresEventStore) {
        self.postgres = store
    }

    var store: any EventStore { postgres }
    private var s: String { postgres.s }
    /// The first key of the lease advisory locks (as ``PostgresLeadership`` takes them).
    private var leaseLockClass: String { "backstage.lease.\(postgres.schema.rawValue)" }

    /// Runs `sql` (a constant of this file with `$n` placeholders) with `binds`.
    private func rows(_ sql: String, _ bindings: PostgresBindings) async throws -> [PostgresRandomAccessRow] {
        let query = PostgresQuery(unsafeSQL: sql, binds: bindings)
        return try await postgres.run { conn in
            var all: [PostgresRandomAccessRow] = []
            for try await row in try await conn.query(query, logger: self.postgres.queryLogger) {
                all.append(row.makeRandomAccess())
            }
            return all
        }
    }

    /// Keeps streams of category `$n`: the id is the category or starts with it and `-`.
    private static func categoryCondition(_ n: Int) -> String {
        "(st.stream = $\(n) OR starts_with(st.stream, $\(n) || '-'))"
    }

    func streams(category: String?, after: String?, limit: Int) async throws -> StreamPage {
        try postgres.limits.validate(pageSize: limit)
        if let category, category.utf8.contains(UInt8(ascii: "-")) { return StreamPage(streams: [], next: nil) }
        var conditions = ["st.version > 0"]
        var bindings = PostgresBindings()
        if let after {
            bindings.append(after)
            conditions.append("st.stream > $\(bindings.count)")
        }
        if let category {
            bindings.append(category)
            conditions.append(Self.categoryCondition(bindings.count))
        }
        bindings.append(Int64(limit + 1))
        let result = try await rows(
            """
            SELECT st.stream, st.version, e.position, e.recorded_at
            FROM \(s).streams st JOIN \(s).events e ON e.stream = st.stream AND e.stream_version = st.version
            WHERE \(conditions.joined(separator: " AND "))
            ORDER BY st.stream LIMIT $\(bindings.count)
            """, bindings)
        var streams = try result.map { r in
            StreamInfo(
                stream: try r[0].decode(String.self), version: try r[1].decode(Int64.self),
                lastPosition: try r[2].decode(Int64.self), lastWrittenAt: try r[3].decode(Date.self))
        }
        var next: String?
        if streams.count > limit {
            streams.removeLast(streams.count - limit)
            next = streams.last?.stream
        }
        return StreamPage(streams: streams, next: next)
    }

    func stream(_ stream: String) async throws -> StreamInfo? {
        try postgres.limits.validate(stream: stream)
        var bindings = PostgresBindings()
        bindings.append(stream)
        return try await rows(
            """
            SELECT st.version, e.position, e.recorded_at
            FROM \(s).streams st JOIN \(s).events e ON e.stream = st.stream AND e.stream_version = st.version
            WHERE st.stream = $1 AND st.version > 0
            """, bindings
        ).first.map { r in
            StreamInfo(
                stream: stream, version: try r[0].decode(Int64.self), lastPosition: try r[1].decode(Int64.self),
                lastWrittenAt: try r[2].decode(Date.self))
        }
    }

    func subscriptions(filters: [String: EventFilter]) async throws -> [SubscriptionInfo] {
        var bindings = PostgresBindings()
        bindings.append(leaseLockClass)
        let listed = try await rows(
            """
            WITH names AS (
                SELECT subscription FROM \(s).checkpoints
                UNION SELECT subscription FROM \(s).leases
                UNION SELECT subscription FROM \(s).parked_events
            )
            SELECT n.subscription, c.transaction_id::text, c.position, c.updated_at, l.owner, l.token, l.acquired_at,
                   EXISTS (
                       SELECT 1 FROM pg_locks k
                       WHERE k.locktype = 'advisory' AND k.granted
                         AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                         AND k.classid = hashtext($1)::oid AND k.objid = hashtext(n.subscription)::oid
                         AND k.objsubid = 2),
                   (SELECT count(*) FROM \(s).parked_events p WHERE p.subscription = n.subscription)
            FROM names n LEFT JOIN \(s).checkpoints c USING (subscription) LEFT JOIN \(s).leases l USING (subscription)
            ORDER BY n.subscription
            """, bindings)
        var result: [SubscriptionInfo] = []
        for r in listed {
            let name = try r[0].decode(String.self)
            var checkpoint: LogPosition?
            if let transaction = try r[1].decode(String?.self), let position = try r[2].decode(Int64?.self) {
                checkpoint = LogPosition(
                    transaction: try PostgresEventStore.parseTransaction(transaction), position: position)
            }
            let held = try r[7].decode(Bool.self)
            var lease: LeaseInfo?
            if let owner = try r[4].decode(String?.self), let token = try r[5].decode(Int64?.self),
                let acquired = try r[6].decode(Date?.self)
            {
                lease = LeaseInfo(owner: owner, token: token, acquiredAt: acquired, expiresAt: nil, held: held)
            }
            let (lag, seconds) = try await lag(after: checkpoint ?? .start, filter: filters[name] ?? .all)
            result.append(
                SubscriptionInfo(
                    subscription: name, checkpoint: checkpoint, checkpointUpdatedAt: try r[3].decode(Date?.self),
                    lagEvents: lag, lagSeconds: seconds, filtered: filters[name] != nil, lease: lease,
                    activity: held ? .running : .stopped, parked: Int(try r[8].decode(Int64.self))))
        }
        return result
    }

    /// Events after `position` that `filter` keeps, and the age in seconds of the oldest of them.
    private func lag(after position: LogPosition, filter: EventFilter) async throws -> (Int64, Double) {
        var bindings = PostgresBindings()
        bindings.append(String(position.transaction))
        bindings.append(position.position)
        var conditions = ""
        if let types = filter.types {
            bindings.append(types.sorted())
            conditions += " AND type = ANY($\(bindings.count))"
        }
        if let categories = filter.categories {
            bindings.append(categories.sorted())
            conditions += " AND category = ANY($\(bindings.count))"
        }
        let result = try await rows(
            """
            SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(recorded_at))::float8, 0)
            FROM \(s).events WHERE (transaction_id, position) > ($1::xid8, $2)\(conditions)
            """, bindings)
        guard let r = result.first else { return (0, 0) }
        return (try r[0].decode(Int64.self), max(0, try r[1].decode(Double.self)))
    }

    func statistics(category: String?) async throws -> EventStatistics {
        var bindings = PostgresBindings()
        var condition = ""
        var streamCondition = "st.version > 0"
        if let category {
            bindings.append(category)
            condition = "WHERE category = $1"
            streamCondition += " AND " + Self.categoryCondition(1)
        }
        let types = try await rows(
            "SELECT type, count(*), min(recorded_at), max(recorded_at) FROM \(s).events \(condition) GROUP BY type",
            bindings
        ).map { r in
            EventStatistics.TypeCount(
                type: try r[0].decode(String.self), count: try r[1].decode(Int64.self),
                first: try r[2].decode(Date.self), last: try r[3].decode(Date.self))
        }
        let days = try await rows(
            """
            SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, count(*)
            FROM \(s).events \(condition) GROUP BY day
            """, bindings
        ).map { r in EventStatistics.DayCount(day: try r[0].decode(String.self), count: try r[1].decode(Int64.self)) }
        let streams =
            try await rows("SELECT count(*) FROM \(s).streams st WHERE \(streamCondition)", bindings).first
            .map { try $0[0].decode(Int64.self) } ?? 0
        return EventStatistics(
            events: types.reduce(0) { $0 + $1.count }, streams: streams, byType: types, byDay: days)
    }
}

extension PostgresEventStore {
    /// Whether the store's schema holds an events table (a store opened without migrating may
    /// point at a schema that is not one). For tools that inspect a store (the `backstage` CLI).
    package func hasEventsTable() async throws -> Bool {
        let name = "\(s).events"
        return try await run { conn in
            let rows = try await conn.query("SELECT to_regclass(\(name)) IS NOT NULL", logger: self.queryLogger)
            for try await exists in rows.decode(Bool.self) { return exists }
            return false
        }
    }
}

extension PostgresConnectionSettings {
    /// Connects once, outside any pool, and disconnects: a pool retries failed connections, so a
    /// tool that should fail at once (unreachable server, wrong password) asks this first.
    /// - Throws: ``PostgresStoreError`` saying why the server cannot be used.
    package func probe() async throws {
        var configuration: PostgresConnection.Configuration
        let place: String
        if let unixSocketFolder {
            place = "\(unixSocketFolder)/.s.PGSQL.\(port)"
            configuration = .init(unixSocketPath: place, username: username, password: password, database: database)
        } else {
            place = "\(host ?? "localhost"):\(port)"
            let tls: PostgresConnection.Configuration.TLS =
                switch self.tls {
                case .disable: .disable
                case .prefer: .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
                case .require: .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
                }
            configuration = .init(
                host: host ?? "localhost", port: port, username: username, password: password, database: database,
                tls: tls)
        }
        let logger = Logger(label: "backstage.probe", factory: { _ in SwiftLogNoOpLogHandler() })
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
        } catch let error as PSQLError {
            if let state = error.sqlState {
                throw PostgresStoreError.database(sqlState: state, message: error.serverMessage ?? "\(error.code)")
            }
            let reason = error.underlying.map { "\($0)" } ?? "\(error.code)"
            throw PostgresStoreError.database(sqlState: "connection", message: "cannot connect to \(place): \(reason)")
        } catch {
            throw PostgresStoreError.database(sqlState: "connection", message: "cannot connect to \(place): \(error)")
        }
        try? await connection.close()
    }
}
