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
struct OpenedStore: Sendable {
    let store: any EventStore
    let close: @Sendable () async -> Void
}

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
    /// Opens the store, never creating anything: a missing SQLite file or a schema without a
    /// store is an error.
    func open(context: ToolContext) async throws -> OpenedStore {
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
            let store = try SQLiteEventStore(path: path, configuration: configuration)
            return OpenedStore(store: store, close: { try? store.close() })
        case .postgres(let url):
            return try await openPostgres(url: url, context: context)
        }
    }

    private func openPostgres(url: String, context: ToolContext) async throws -> OpenedStore {
        let settings = try PostgresConnectionSettings(url: url)
        var configuration = PostgresEventStore.Configuration()
        configuration.schema = schema ?? context.tool.defaultSchema ?? "backstage"
        configuration.migrate = false
        configuration.maximumConnections = 4
        configuration.logger = Logger(label: "backstage.cli", factory: { _ in SwiftLogNoOpLogHandler() })
        let timeout = connectTimeout
        let opening = configuration
        let where_ = "\(settings.host ?? settings.unixSocketFolder ?? "localhost"):\(settings.port)"
        let store = try await withThrowingTaskGroup(of: PostgresEventStore?.self) { group in
            group.addTask {
                try await settings.probe()
                let store = try await PostgresEventStore(settings: settings, configuration: opening)
                do {
                    guard try await store.hasEventsTable() else {
                        throw ToolError("schema '\(opening.schema)' holds no Backstage store (no events table)")
                    }
                } catch {
                    await store.close()
                    throw error
                }
                return store
            }
            group.addTask {
                try await Task.sleep(for: .seconds(timeout))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let store = first else {
                throw ToolError("PostgreSQL at \(where_) did not answer within \(timeout) seconds")
            }
            return store
        }
        return OpenedStore(store: store, close: { await store.close() })
    }
}

/// Runs `body` with the store the options name, and closes it.
func withStore<T: Sendable>(
    _ options: StoreOptions, _ body: (any EventStore, ToolContext) async throws -> T
) async throws -> T {
    let context = try ToolContext.required
    let opened = try await options.open(context: context)
    do {
        let value = try await body(opened.store, context)
        await opened.close()
        return value
    } catch {
        await opened.close()
        throw error
    }
}
