import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

/// Where the PostgreSQL tests find their server.
///
/// They read `BACKSTAGE_POSTGRES_URL` (scripts/postgres prints it). Without it they are skipped
/// locally; with `CI=true` they run and fail, so a missing server is never a silent skip.
enum PostgresTestEnvironment {
    static let url: String? = {
        guard let url = ProcessInfo.processInfo.environment["BACKSTAGE_POSTGRES_URL"], !url.isEmpty else {
            return nil
        }
        return url
    }()

    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// Run when there is a server, and always in CI (where a missing server fails the tests).
    static var shouldRun: Bool { url != nil || isCI }

    struct Missing: Error, CustomStringConvertible {
        var description: String {
            "BACKSTAGE_POSTGRES_URL is not set and CI=true: the PostgreSQL tests must run in CI (use scripts/test)"
        }
    }

    static func requireURL() throws -> String {
        guard let url else { throw Missing() }
        return url
    }
}

extension Trait where Self == ConditionTrait {
    /// Skips the test locally when no PostgreSQL server is configured.
    static var needsPostgres: Self {
        .enabled(
            if: PostgresTestEnvironment.shouldRun,
            "BACKSTAGE_POSTGRES_URL is not set: start a throwaway server with eval \"$(scripts/postgres start)\"")
    }
}

/// A fresh schema per test, dropped afterwards.
func freshSchemaName() -> String {
    "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
}

/// Runs a store on a fresh schema around `body`, then drops the schema and closes the store.
func withFreshStore<T: Sendable>(
    configure: (inout PostgresEventStore.Configuration) -> Void = { _ in },
    _ body: (PostgresEventStore) async throws -> T
) async throws -> T {
    let url = try PostgresTestEnvironment.requireURL()
    var configuration = PostgresEventStore.Configuration()
    configuration.schema = freshSchemaName()
    configure(&configuration)
    return try await PostgresEventStore.withStore(url: url, configuration: configuration) { store in
        do {
            let value = try await body(store)
            try await store.dropSchema()
            return value
        } catch {
            try? await store.dropSchema()
            throw error
        }
    }
}

/// Runs another store (its own pool) on the same schema as `store` around `body`: another "process".
func withPeer<T: Sendable>(
    of store: PostgresEventStore, configure: (inout PostgresEventStore.Configuration) -> Void = { _ in },
    _ body: (PostgresEventStore) async throws -> T
) async throws -> T {
    var configuration = PostgresEventStore.Configuration()
    configuration.schema = store.schema.rawValue
    configure(&configuration)
    return try await PostgresEventStore.withStore(
        url: try PostgresTestEnvironment.requireURL(), configuration: configuration, body)
}

/// A store on a fresh schema that nothing runs yet (for lifecycle tests); drop its schema with
/// ``PostgresEventStore/dropSchema()`` while it runs.
func unstartedStore(configure: (inout PostgresEventStore.Configuration) -> Void = { _ in }) throws
    -> PostgresEventStore
{
    var configuration = PostgresEventStore.Configuration()
    configuration.schema = freshSchemaName()
    configure(&configuration)
    return try PostgresEventStore(url: try PostgresTestEnvironment.requireURL(), configuration: configuration)
}

/// Runs `count` peers of `store` around `body`.
func withPeers<T: Sendable>(
    of store: PostgresEventStore, count: Int, _ body: ([PostgresEventStore]) async throws -> T
) async throws -> T {
    if count <= 0 { return try await body([]) }
    return try await withPeer(of: store) { first in
        try await withPeers(of: store, count: count - 1) { rest in try await body([first] + rest) }
    }
}

/// A small JSON event.
func event(_ type: String = "Tested", _ json: String = #"{"n":1}"#, metadata: EventMetadata = EventMetadata())
    -> EventData
{
    EventData(type: type, data: Data(json.utf8), metadata: metadata)
}

/// Waits until `condition` holds, checking every 20 ms, for at most `timeout`.
func eventually(
    timeout: Duration = .seconds(10), _ condition: () async throws -> Bool
) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// The build folder holding this test binary and the worker executable.
func workerExecutable() throws -> URL {
    try testExecutable(named: "backstage-postgres-worker")
}

/// A running worker process whose stdout lines are collected (by a thread of its own: a
/// blocking read must not occupy one of the few threads of the concurrency pool).
final class WorkerProcess: Sendable {
    let process: Process
    private let lines: AsyncStream<String>
    private let finished: AsyncStream<[String]>
    private let box = Locked<[String]>([])

    init(arguments: [String]) throws {
        let process = Process()
        process.executableURL = try workerExecutable()
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        self.process = process
        let (stream, continuation) = AsyncStream<String>.makeStream()
        let (finished, done) = AsyncStream<[String]>.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.lines = stream
        self.finished = finished
        let box = self.box
        readLines(of: pipe.fileHandleForReading) { line in
            box.value.withLock { $0.append(line) }
            continuation.yield(line)
        } end: {
            continuation.finish()
            done.yield(box.value.withLock { $0 })
            done.finish()
        }
    }

    /// Waits for a line that satisfies `predicate` (or the end of the output).
    func waitForLine(where predicate: @Sendable (String) -> Bool) async -> String? {
        for await line in lines where predicate(line) { return line }
        return nil
    }

    /// Every line, once the output has ended.
    func allLines() async -> [String] {
        for await all in finished { return all }
        return box.value.withLock { $0 }
    }

    /// The lines printed so far.
    var currentLines: [String] { box.value.withLock { $0 } }

    /// Sends `signal` to the process if it still runs.
    func kill(_ signal: Int32 = SIGKILL) {
        if process.isRunning { Foundation.kill(process.processIdentifier, signal) }
    }
}
