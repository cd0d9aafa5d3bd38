import Foundation
import PostgresNIO

/// A PostgreSQL schema name that is safe to put into SQL text.
///
/// Identifiers cannot be bound parameters, so Backstage only ever writes a schema name that
/// matches `^[a-z_][a-z0-9_]{0,62}$` and does not start with the reserved `pg_` prefix.
public struct PostgresSchemaName: Sendable, Hashable, CustomStringConvertible {
    /// The checked name.
    public let rawValue: String

    /// Checks `name` against the allowlist pattern.
    /// - Throws: ``PostgresStoreError/invalidSchemaName(_:)``.
    public init(_ name: String) throws(PostgresStoreError) {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, bytes.count <= 63 else { throw .invalidSchemaName(name) }
        func isLower(_ b: UInt8) -> Bool { b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") }
        func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        guard isLower(first) || first == UInt8(ascii: "_") else { throw .invalidSchemaName(name) }
        for b in bytes where !(isLower(b) || isDigit(b) || b == UInt8(ascii: "_")) {
            throw .invalidSchemaName(name)
        }
        if name.hasPrefix("pg_") { throw .invalidSchemaName(name) }
        self.rawValue = name
    }

    /// The name.
    public var description: String { rawValue }
}

/// Errors of the PostgreSQL backend (event store errors are `EventStoreError`).
public enum PostgresStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The schema name does not match the allowlist pattern `^[a-z_][a-z0-9_]{0,62}$` (or starts with `pg_`).
    case invalidSchemaName(String)
    /// The connection URL could not be understood.
    case invalidURL(String)
    /// The database answered with an error.
    case database(sqlState: String, message: String)
    /// The database returned something the store did not expect (a bug or a foreign schema).
    case unexpectedResult(String)
    /// The store was closed.
    case closed
    /// The schema stores transaction ids at or above the next transaction id of this cluster:
    /// typically a `pg_dump` restored into another cluster, whose transaction counter is lower.
    /// New events would sort below stored events and checkpoints, so readers would skip them.
    /// The store refuses to open; see ``PostgresEventStore`` ("Moving a store to another
    /// cluster") for the supported migration.
    case transactionIDsAhead(schema: String, storedMaximum: UInt64, clusterNext: UInt64)

    public var description: String {
        switch self {
        case .invalidSchemaName(let name):
            "invalid schema name '\(name.prefix(80))': it must match ^[a-z_][a-z0-9_]{0,62}$ and not start with pg_"
        case .invalidURL(let reason):
            "invalid PostgreSQL URL: \(reason)"
        case .database(let state, let message):
            "PostgreSQL error \(state): \(message)"
        case .unexpectedResult(let what):
            "unexpected result from PostgreSQL: \(what)"
        case .closed:
            "the PostgreSQL event store is closed"
        case .transactionIDsAhead(let schema, let stored, let next):
            "schema \(schema) stores transaction id \(stored), but this cluster's next transaction id is \(next) "
                + "(was it restored from pg_dump into another cluster?): new events would sort before stored ones. "
                + "Stop the server and run pg_resetwal -e \((stored >> 32) + 1) -D <data directory> to move the "
                + "cluster's transaction id epoch past the stored ids, then start it again"
        }
    }
}

extension PSQLError {
    /// The SQLSTATE code the server sent, if it sent one.
    var sqlState: String? { serverInfo?[.sqlState] }
    /// The name of the violated constraint, if any.
    var constraintName: String? { serverInfo?[.constraintName] }
    /// The server's message, if any.
    var serverMessage: String? { serverInfo?[.message] }
}

/// Connection settings for PostgreSQL, usually read from a URL such as
/// `postgres://user:password@127.0.0.1:5432/app?sslmode=disable`.
///
/// Supported query items: `sslmode` (`disable`, `prefer` (the default, as libpq), `require`) and
/// `host` (a unix socket folder, as libpq).
public struct PostgresConnectionSettings: Sendable {
    /// How the connection uses TLS.
    public enum TLSMode: String, Sendable, Hashable {
        /// Never.
        case disable
        /// When the server offers it.
        case prefer
        /// Always; fail otherwise.
        case require
    }

    /// Host name or address (nil with a unix socket).
    public var host: String?
    /// TCP port.
    public var port: Int
    /// Folder of the server's unix socket, when connecting through one.
    public var unixSocketFolder: String?
    /// User name.
    public var username: String
    /// Password, if any.
    public var password: String?
    /// Database name, if any (the server defaults to the user name).
    public var database: String?
    /// TLS use.
    public var tls: TLSMode

    /// Creates settings for a TCP connection.
    public init(
        host: String, port: Int = 5432, username: String, password: String?, database: String?,
        tls: TLSMode = .prefer
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Parses a `postgres://` or `postgresql://` URL.
    /// - Throws: ``PostgresStoreError/invalidURL(_:)``.
    public init(url string: String) throws(PostgresStoreError) {
        guard let components = URLComponents(string: string) else {
            throw .invalidURL("not a URL")
        }
        guard let scheme = components.scheme, scheme == "postgres" || scheme == "postgresql" else {
            throw .invalidURL("the scheme must be postgres:// or postgresql://")
        }
        var tls = TLSMode.prefer
        var socketFolder: String?
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, let mode = TLSMode(rawValue: value) else {
                    throw .invalidURL("sslmode must be disable, prefer or require")
                }
                tls = mode
            case "host":
                socketFolder = item.value
            default:
                throw .invalidURL("unsupported parameter '\(item.name)'")
            }
        }
        let user = components.percentEncodedUser.flatMap { $0.removingPercentEncoding }
        guard let user, !user.isEmpty else { throw .invalidURL("a user name is required") }
        self.username = user
        self.password = components.percentEncodedPassword.flatMap { $0.removingPercentEncoding }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? nil : path
        self.port = components.port ?? 5432
        self.tls = tls
        if let socketFolder, socketFolder.hasPrefix("/") {
            self.unixSocketFolder = socketFolder
            self.host = nil
        } else {
            let host = socketFolder ?? components.host
            guard let host, !host.isEmpty else { throw .invalidURL("a host is required") }
            self.host = host
        }
    }

    /// The configuration of a `PostgresClient` (connection pool) with these settings.
    public func clientConfiguration(maximumConnections: Int = 20) -> PostgresClient.Configuration {
        var configuration: PostgresClient.Configuration
        if let unixSocketFolder {
            configuration = .init(
                unixSocketPath: "\(unixSocketFolder)/.s.PGSQL.\(port)", username: username,
                password: password, database: database)
        } else {
            let tls: PostgresClient.Configuration.TLS =
                switch self.tls {
                case .disable: .disable
                case .prefer: .prefer(.makeClientConfiguration())
                case .require: .require(.makeClientConfiguration())
                }
            configuration = .init(
                host: host ?? "localhost", port: port, username: username, password: password,
                database: database, tls: tls)
        }
        configuration.options.maximumConnections = max(maximumConnections, 2)
        return configuration
    }
}
