import Backstage
import BackstagePostgres
import BackstageSQLite
import Foundation
import ServiceLifecycle

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

/// The box office's event store, and the service that runs it.
public struct BoxOfficeDatabase: Sendable {
    /// Where it is.
    public let location: DatabaseLocation
    /// The store.
    public let store: any EventStore
    /// The store as a swift-service-lifecycle `Service` (nil in memory): an application lists it
    /// first in its `ServiceGroup`, so it starts before and stops after the services that use it.
    public let service: (any Service)?
    private let closeStore: @Sendable () async throws -> Void

    /// The store at `location`; `fresh` deletes an existing SQLite file first (a PostgreSQL schema
    /// is reset by ``with(_:fresh:schema:_:)``). On PostgreSQL everything lives in `schema`, and
    /// nothing connects until ``service`` runs.
    public static func open(_ location: DatabaseLocation, fresh: Bool = false, schema: String = "box_office")
        throws -> BoxOfficeDatabase
    {
        switch location {
        case .memory:
            return BoxOfficeDatabase(location: location, store: InMemoryEventStore(), service: nil) {}
        case .sqlite(let path):
            if fresh {
                for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
                    try FileManager.default.removeItem(atPath: path + suffix)
                }
            }
            let store = try SQLiteEventStore(path: path)
            return BoxOfficeDatabase(location: location, store: store, service: store) { try await store.close() }
        case .postgres(let url):
            var configuration = PostgresEventStore.Configuration()
            configuration.schema = schema
            let store = try PostgresEventStore(url: url, configuration: configuration)
            return BoxOfficeDatabase(location: location, store: store, service: store) { await store.close() }
        }
    }

    /// Runs the store at `location` around `body` (for the demo, scripts and tests); `fresh`
    /// starts from an empty SQLite file or PostgreSQL schema.
    public static func with<T: Sendable>(
        _ location: DatabaseLocation, fresh: Bool = false, schema: String = "box_office",
        _ body: (BoxOfficeDatabase) async throws -> T
    ) async throws -> T {
        let database = try open(location, fresh: fresh, schema: schema)
        switch database.store {
        case let store as PostgresEventStore:
            return try await PostgresEventStore.withStore(store) { store in
                if fresh { try await store.resetSchema() }
                return try await body(database)
            }
        case let store as SQLiteEventStore:
            return try await SQLiteEventStore.withStore(store) { _ in try await body(database) }
        default:
            return try await body(database)
        }
    }

    /// Closes the store.
    public func close() async throws {
        try await closeStore()
    }
}
