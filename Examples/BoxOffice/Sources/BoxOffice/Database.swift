import Backstage
import BackstagePostgres
import BackstageSQLite
import Foundation

/// Where the box office keeps its events, parsed from a `--database` value:
/// a file path (SQLite) or `memory` (in-memory, gone at exit).
public enum DatabaseLocation: Sendable, Hashable, CustomStringConvertible {
    /// An SQLite file.
    case sqlite(path: String)
    /// An in-memory store.
    case memory
    /// A PostgreSQL database (`postgres://user:password@host:port/database`); the events live in
    /// the schema `box_office`.
    case postgres(url: String)

    /// Parses a `--database` value: `memory`, `sqlite:PATH`, or a plain file path.
    ///
    /// - Throws: ``DatabaseError/unsupported(_:)`` for URLs of stores the example cannot open.
    public init(parsing value: String) throws(DatabaseError) {
        if value == "memory" || value == ":memory:" {
            self = .memory
        } else if value.hasPrefix("sqlite:") {
            self = .sqlite(path: String(value.dropFirst("sqlite:".count)))
        } else if value.hasPrefix("postgres://") || value.hasPrefix("postgresql://") {
            self = .postgres(url: value)
        } else if value.contains("://") {
            throw .unsupported(value)
        } else {
            self = .sqlite(path: value)
        }
        if case .sqlite(let path) = self, path.isEmpty { throw .unsupported(value) }
    }

    public var description: String {
        switch self {
        case .sqlite(let path): "SQLite \(path)"
        case .memory: "memory"
        case .postgres(let url):
            // Never print the password.
            "PostgreSQL \((try? PostgresConnectionSettings(url: url)).map { "\($0.host ?? "socket"):\($0.port)/\($0.database ?? "")" } ?? "")"
        }
    }
}

/// Errors opening the box office's database.
public enum DatabaseError: Error, Hashable, CustomStringConvertible {
    /// The `--database` value names no store this example can open.
    case unsupported(String)

    public var description: String {
        switch self {
        case .unsupported(let value):
            "cannot open database '\(value)': give a file path (SQLite), sqlite:PATH, postgres://..., or memory"
        }
    }
}

/// An open event store and how to close it.
public struct BoxOfficeDatabase: Sendable {
    /// Where it is.
    public let location: DatabaseLocation
    /// The store.
    public let store: any EventStore
    private let closeStore: @Sendable () async throws -> Void

    /// Opens the store at `location`; `fresh` deletes an existing SQLite file (or PostgreSQL
    /// schema) first. On PostgreSQL everything lives in `schema`.
    public static func open(_ location: DatabaseLocation, fresh: Bool = false, schema: String = "box_office")
        async throws -> BoxOfficeDatabase
    {
        switch location {
        case .memory:
            return BoxOfficeDatabase(location: location, store: InMemoryEventStore()) {}
        case .sqlite(let path):
            if fresh {
                for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
                    try FileManager.default.removeItem(atPath: path + suffix)
                }
            }
            let store = try SQLiteEventStore(path: path)
            return BoxOfficeDatabase(location: location, store: store) { try store.close() }
        case .postgres(let url):
            var configuration = PostgresEventStore.Configuration()
            configuration.schema = schema
            configuration.migrate = false
            let store = try await PostgresEventStore(url: url, configuration: configuration)
            if fresh {
                _ = try await store.client.query("DROP SCHEMA IF EXISTS \(unescaped: store.schema.rawValue) CASCADE")
            }
            try await store.migrate()
            return BoxOfficeDatabase(location: location, store: store) { await store.close() }
        }
    }

    /// Closes the store.
    public func close() async throws {
        try await closeStore()
    }
}
