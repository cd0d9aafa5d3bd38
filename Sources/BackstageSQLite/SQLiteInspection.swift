import Backstage
import Foundation
import GRDB

extension SQLiteEventStore: InspectableEventStore {
    /// An inspector that answers in SQL over this store's file (`SQLiteInspector`).
    public func makeInspector() -> any StoreInspector { SQLiteInspector(store: self) }
}

/// Inspection of an ``SQLiteEventStore`` in SQL: streams from the `(stream, version)` index,
/// subscriptions from the checkpoint, lease and parked-event tables, statistics grouped in SQLite.
struct SQLiteInspector: StoreInspector {
    let sqliteStore: SQLiteEventStore

    init(store: SQLiteEventStore) {
        self.sqliteStore = store
    }

    var store: any EventStore { sqliteStore }
    private var database: any DatabaseWriter { sqliteStore.database }

    /// The SQL condition (and its arguments) that keeps the streams of `category`: the stream id
    /// is the category, or starts with the category and `-` (a range of the stream index: `.` is
    /// the byte after `-`). Nil when no stream can be in it (a category never holds a `-`).
    private static func categoryCondition(_ category: String) -> (String, StatementArguments)? {
        if category.utf8.contains(UInt8(ascii: "-")) { return nil }
        return ("(stream = ? OR (stream >= ? AND stream < ?))", [category, category + "-", category + "."])
    }

    func streams(category: String?, after: String?, limit: Int) async throws -> StreamPage {
        try sqliteStore.limits.validate(pageSize: limit)
        var conditions: [String] = []
        var arguments: StatementArguments = []
        if let after {
            conditions.append("stream > ?")
            arguments += [after]
        }
        if let category {
            guard let (sql, args) = Self.categoryCondition(category) else { return StreamPage(streams: [], next: nil) }
            conditions.append(sql)
            arguments += args
        }
        arguments += [limit + 1]
        let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let sql = """
            SELECT e.stream, e.version, e.position, e.recorded_at
            FROM (SELECT stream, MAX(version) AS version FROM backstage_events \(whereClause)
                  GROUP BY stream ORDER BY stream LIMIT ?) s
            JOIN backstage_events e ON e.stream = s.stream AND e.version = s.version
            ORDER BY e.stream
            """
        let bound = arguments
        var streams = try await translatingErrors {
            try await database.read { db in
                try Row.fetchAll(db, sql: sql, arguments: bound).map { row in
                    StreamInfo(
                        stream: row[0], version: row[1], lastPosition: row[2],
                        lastWrittenAt: Date(timeIntervalSince1970: row[3]))
                }
            }
        }
        var next: String?
        if streams.count > limit {
            streams.removeLast(streams.count - limit)
            next = streams.last?.stream
        }
        return StreamPage(streams: streams, next: next)
    }

    func stream(_ stream: String) async throws -> StreamInfo? {
        try sqliteStore.limits.validate(stream: stream)
        return try await translatingErrors {
            try await database.read { db in
                try Row.fetchOne(
                    db,
                    sql: """
                        SELECT version, position, recorded_at FROM backstage_events
                        WHERE stream = ? ORDER BY version DESC LIMIT 1
                        """, arguments: [stream]
                ).map { row in
                    StreamInfo(
                        stream: stream, version: row[0], lastPosition: row[1],
                        lastWrittenAt: Date(timeIntervalSince1970: row[2]))
                }
            }
        }
    }

    /// The SQL condition (and its arguments) of `filter`, for the events table.
    static func filterCondition(_ filter: EventFilter) -> (String, StatementArguments) {
        var sql = ""
        var arguments: StatementArguments = []
        if let types = filter.types {
            sql += " AND type IN (\(Array(repeating: "?", count: types.count).joined(separator: ",")))"
            arguments += StatementArguments(types.sorted())
        }
        if let categories = filter.categories {
            sql += " AND category IN (\(Array(repeating: "?", count: categories.count).joined(separator: ",")))"
            arguments += StatementArguments(categories.sorted())
        }
        return (sql, arguments)
    }

    func subscriptions(filters: [String: EventFilter]) async throws -> [SubscriptionInfo] {
        let now = Date()
        return try await translatingErrors {
            try await database.read { db in
                let names = try String.fetchAll(
                    db,
                    sql: """
                        SELECT subscription FROM backstage_checkpoints
                        UNION SELECT subscription FROM backstage_leases
                        UNION SELECT subscription FROM backstage_parked_events
                        ORDER BY 1
                        """)
                return try names.map { name in
                    let checkpoint = try SQLiteCheckpointStore.checkpoint(name, in: db)
                    let after = checkpoint?.position.position ?? 0
                    let filter = filters[name] ?? .all
                    let (condition, arguments) = Self.filterCondition(filter)
                    let lag =
                        try Int64.fetchOne(
                            db, sql: "SELECT COUNT(*) FROM backstage_events WHERE position > ?\(condition)",
                            arguments: [after] + arguments) ?? 0
                    let oldest = try Double.fetchOne(
                        db,
                        sql:
                            "SELECT recorded_at FROM backstage_events WHERE position > ?\(condition) ORDER BY position LIMIT 1",
                        arguments: [after] + arguments)
                    var lease: LeaseInfo?
                    if let row = try Row.fetchOne(
                        db,
                        sql:
                            "SELECT owner, token, acquired_at, expires_at FROM backstage_leases WHERE subscription = ?",
                        arguments: [name])
                    {
                        let expires = Date(timeIntervalSince1970: row[3])
                        lease = LeaseInfo(
                            owner: row[0], token: row[1], acquiredAt: Date(timeIntervalSince1970: row[2]),
                            expiresAt: expires, held: expires > now)
                    }
                    let parked =
                        try Int.fetchOne(
                            db, sql: "SELECT COUNT(*) FROM backstage_parked_events WHERE subscription = ?",
                            arguments: [name]) ?? 0
                    return SubscriptionInfo(
                        subscription: name, checkpoint: checkpoint?.position,
                        checkpointUpdatedAt: checkpoint?.updatedAt, lagEvents: lag,
                        lagSeconds: oldest.map { max(0, now.timeIntervalSince1970 - $0) } ?? 0,
                        filtered: filters[name] != nil, lease: lease,
                        activity: lease?.held == true ? .running : .stopped, parked: parked)
                }
            }
        }
    }

    func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent] {
        try await translatingErrors {
            try await sqliteStore.pipelineDefaults.parkedEvents.parkedEvents(subscription: subscription, limit: limit)
        }
    }

    func statistics(category: String?) async throws -> EventStatistics {
        let condition = category == nil ? "" : "WHERE category = ?"
        let arguments: StatementArguments = category.map { [$0] } ?? []
        return try await translatingErrors {
            try await database.read { db in
                let types = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT type, COUNT(*), MIN(recorded_at), MAX(recorded_at) FROM backstage_events
                        \(condition) GROUP BY type
                        """, arguments: arguments
                ).map { row in
                    EventStatistics.TypeCount(
                        type: row[0], count: row[1], first: Date(timeIntervalSince1970: row[2]),
                        last: Date(timeIntervalSince1970: row[3]))
                }
                let days = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT date(recorded_at, 'unixepoch') AS day, COUNT(*) FROM backstage_events
                        \(condition) GROUP BY day
                        """, arguments: arguments
                ).map { row in EventStatistics.DayCount(day: row[0], count: row[1]) }
                let streams =
                    try Int64.fetchOne(
                        db, sql: "SELECT COUNT(DISTINCT stream) FROM backstage_events \(condition)",
                        arguments: arguments) ?? 0
                return EventStatistics(
                    events: types.reduce(0) { $0 + $1.count }, streams: streams, byType: types, byDay: days)
            }
        }
    }
}

extension SQLiteEventStore {
    /// Why the file at `path` cannot be opened as an existing store without writing to it (nil:
    /// it can): missing, not an SQLite database, or without the events table. Opens it read-only,
    /// so it never creates a file. For tools that inspect a store (the `backstage` CLI).
    package static func existingStoreProblem(at path: String) -> String? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            return "no such file: \(path)"
        }
        if isDirectory.boolValue { return "\(path) is a directory, not an SQLite file" }
        var configuration = GRDB.Configuration()
        configuration.readonly = true
        do {
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            defer { try? queue.close() }
            let found = try queue.read { db in
                try Bool.fetchOne(
                    db, sql: "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'backstage_events'"
                )
            }
            return found == true
                ? nil : "\(path) is an SQLite file without a Backstage store (no backstage_events table)"
        } catch let error as DatabaseError {
            return "\(path) cannot be read as an SQLite database: \(error.message ?? "\(error.resultCode)")"
        } catch {
            return "\(path) cannot be read: \(error)"
        }
    }
}
