import ArgumentParser
import Backstage
import BackstagePostgres
import BackstageSQLite
import Foundation
import Logging

/// Options every command takes: which store, and the output format.
struct StoreOptions: ParsableArguments {
    @Option(
        name: [.short, .long],
        help:
            "The store: sqlite:PATH, a file path, or postgres://user:password@host:port/database (default: $BACKSTAGE_STORE)."
    )
    var store: String?

    @Option(help: "The PostgreSQL schema holding the store (default: backstage).")
    var schema: String?

    @Option(help: "Seconds to wait for PostgreSQL to answer when connecting.")
    var connectTimeout: Double = 10

    @Flag(help: "Print JSON for scripts instead of tables.")
    var json = false
}

/// An opened store and how to close it.
/// What `--store` names.
enum StoreTarget: Equatable {
    case sqlite(path: String)
    case postgres(url: String)

    init(_ text: String) throws {
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            self = .postgres(url: text)
        } else if text.hasPrefix("sqlite:") {
            var path = String(text.dropFirst("sqlite:".count))
            if path.hasPrefix("//") { path = String(path.dropFirst(2)) }
            guard !path.isEmpty else { throw ToolError("sqlite: needs a file path (sqlite:PATH)") }
            self = .sqlite(path: path)
        } else if let colon = text.firstIndex(of: ":"), text[..<colon].allSatisfy({ $0.isLetter }),
            text.distance(from: text.startIndex, to: colon) > 1, text.contains("://")
        {
            throw ToolError(
                "unsupported store '\(text[..<colon])': use sqlite:PATH, a file path, or a postgres:// URL")
        } else {
            guard !text.isEmpty else { throw ToolError("the store is empty: give sqlite:PATH or a postgres:// URL") }
            self = .sqlite(path: text)
        }
    }
}

extension StoreOptions {
    /// Runs `body` with the store the options name (running for as long as `body` runs), never
    /// creating anything: a missing SQLite file or a schema without a store is an error.
    func withOpenedStore<T: Sendable>(
        context: ToolContext, _ body: (any EventStore) async throws -> T
    ) async throws -> T {
        guard
            let text = store ?? ProcessInfo.processInfo.environment["BACKSTAGE_STORE"] ?? context.tool.defaultStore
        else {
            throw ToolError(
                "no store given: pass --store sqlite:PATH or --store postgres://... (or set BACKSTAGE_STORE)")
        }
        switch try StoreTarget(text) {
        case .sqlite(let path):
            if let problem = SQLiteEventStore.existingStoreProblem(at: path) { throw ToolError(problem) }
            var configuration = SQLiteEventStore.Configuration()
            configuration.maxReaders = 2
            return try await SQLiteEventStore.withStore(path: path, configuration: configuration) { try await body($0) }
        case .postgres(let url):
            return try await withPostgres(url: url, context: context, body)
        }
    }

    private func withPostgres<T: Sendable>(
        url: String, context: ToolContext, _ body: (any EventStore) async throws -> T
    ) async throws -> T {
        let settings = try PostgresConnectionSettings(url: url)
        var configuration = PostgresEventStore.Configuration()
        configuration.schema = schema ?? context.tool.defaultSchema ?? "backstage"
        configuration.migrate = false
        configuration.maximumConnections = 4
        configuration.logger = Logger(label: "backstage.cli", factory: { _ in SwiftLogNoOpLogHandler() })
        let timeout = connectTimeout
        let where_ = "\(settings.host ?? settings.unixSocketFolder ?? "localhost"):\(settings.port)"
        // One connection of our own first: a wrong password or an unreachable server is one clear
        // error at once, not a pool retrying until the timeout.
        let answered = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await settings.probe()
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(timeout))
                return false
            }
            defer { group.cancelAll() }
            return try await group.next() ?? false
        }
        guard answered else { throw ToolError("PostgreSQL at \(where_) did not answer within \(timeout) seconds") }
        let opening = configuration
        return try await PostgresEventStore.withStore(
            try PostgresEventStore(settings: settings, configuration: opening)
        ) {
            store in
            guard try await store.hasEventsTable() else {
                throw ToolError("schema '\(opening.schema)' holds no Backstage store (no events table)")
            }
            return try await body(store)
        }
    }
}

/// Runs `body` with the store the options name, and closes it.
func withStore<T: Sendable>(
    _ options: StoreOptions, _ body: (any EventStore, ToolContext) async throws -> T
) async throws -> T {
    let context = try ToolContext.required
    return try await options.withOpenedStore(context: context) { store in try await body(store, context) }
}
