// A child process for the PostgreSQL multi-process tests. Modes:
//
//   subscribe <url> <schema> <poll ms>
//       Follows the global log from the start and prints, per event,
//         E <transaction> <position> <stream> <version> <event id> <delivered at, ns since 1970>
//       after a first line `ready`; stops after the first event of type `end` and prints `done`.
//
//   project <url> <schema>
//       Runs the `counts` projection (PostgresProjection + PostgresLeadership) in a
//       PipelineService until killed; prints `started`.
//
//   append <url> <schema> <stream> <type> <json>
//       Appends one event from this process; prints `appended <stream version>` (RuntimeModes.swift).
//
//   race <url> <schema> <shows> <capacity> <attempts> <start at, ms since 1970>
//       `sell`, started at a wall-clock instant so that the processes race (RuntimeModes.swift).
//
//   bench <url> <schema>
//       Prints append throughput (events/s) with 1 and 8 concurrent writers, and the subscriber
//       lag from commit to delivery (median, p99, ms). Build it in release mode to measure.
//
//   serve <url> <schema>
//       Like `project`, inside a ServiceGroup that shuts down gracefully on SIGTERM; prints
//       `started`, and `exited` once the group has stopped.
//
//   partitioned <url> <schema> <partitions> <lease ms>
//       The `plog` projection split into partitions shared with the other processes running it;
//       prints `started` and `log ...` lines (PartitionModes.swift).
//
//   sell <url> <schema> <shows> <capacity> <attempts>
//       A BackstageApp over PostgreSQL dispatching <attempts> SellTicket commands (8 at a time)
//       to random shows; prints `result sold=<n> soldOut=<n> conflicts=<n> errors=<n>`.
import Backstage
import BackstagePostgres
import BackstageTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization

LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .warning
    return handler
}

func fail(_ message: String) -> Never { fail(message, worker: "backstage-postgres-worker") }

// Exit with the test process that started us (a killed test must not leave workers behind).
exitWithParent()

let arguments = CommandLine.arguments
guard arguments.count >= 2 else { fail("usage: backstage-postgres-worker <mode> ...") }

func storeConfiguration(schema: String, connections: Int = 4) -> PostgresEventStore.Configuration {
    var configuration = PostgresEventStore.Configuration()
    configuration.schema = schema
    configuration.maximumConnections = connections
    return configuration
}

switch arguments[1] {
case "subscribe":
    guard arguments.count == 5, let pollMillis = Int(arguments[4]) else {
        fail("usage: subscribe <url> <schema> <poll ms>")
    }
    try await PostgresEventStore.withStore(url: arguments[2], configuration: storeConfiguration(schema: arguments[3])) {
        store in
        let follower = store.events(pageSize: 1_000, mode: .follow(pollInterval: .milliseconds(pollMillis)))
        _ = try await store.headPosition()
        emit("ready")
        var buffer = ""
        var count = 0
        for try await event in follower {
            let now = Date().timeIntervalSince1970
            buffer +=
                "E \(event.transaction) \(event.position) \(event.stream) \(event.streamVersion) \(event.id) \(Int64(now * 1e9))\n"
            count += 1
            if event.type == "end" { break }
            if buffer.utf8.count > 64 * 1024 {
                FileHandle.standardOutput.write(Data(buffer.utf8))
                buffer = ""
            }
        }
        FileHandle.standardOutput.write(Data(buffer.utf8))
        emit("done \(count)")
    }

case "project":
    guard arguments.count == 4 else { fail("usage: project <url> <schema>") }
    try await PostgresEventStore.withStore(url: arguments[2], configuration: storeConfiguration(schema: arguments[3])) {
        store in
        let service = try countsService(store)
        emit("started")
        try await service.run()
    }

case "sell":
    guard arguments.count == 7, let shows = Int(arguments[4]), let capacity = Int(arguments[5]),
        let attempts = Int(arguments[6])
    else { fail("usage: sell <url> <schema> <shows> <capacity> <attempts>") }
    try await PostgresEventStore.withStore(url: arguments[2], configuration: storeConfiguration(schema: arguments[3])) {
        store in
        var router = Router()
        try router.route(RaceSellTicket.self, id: { $0.show }) { show, command in try show.sell(command) }
        let app = BackstageApp(store: store, router: router)
        let tally = RaceTally()
        try await runSellers(app: app, shows: shows, capacity: capacity, attempts: attempts, tally: tally)
        let c = tally.counts.withLock { $0 }
        emit("result sold=\(c.sold) soldOut=\(c.soldOut) conflicts=\(c.conflicts) errors=\(c.errors)")
    }

case "append":
    try await runAppendMode(arguments)

case "race":
    try await runRaceMode(arguments)

case "bench":
    guard arguments.count >= 4 else { fail("usage: bench <url> <schema> [append|lag]") }
    try await PostgresEventStore.withStore(
        url: arguments[2], configuration: storeConfiguration(schema: arguments[3], connections: 12)
    ) { store in
        try await bench(store, only: arguments.count > 4 ? arguments[4] : nil)
    }

case "serve":
    try await serveMode(arguments)

case "handle":
    try await runHandleMode(arguments)

case "partitioned":
    try await runPartitionedMode(arguments)
case "holds":
    try await runHoldsMode(arguments)

default:
    fail("unknown mode \(arguments[1])")
}

// MARK: Benchmark

func bench(_ store: PostgresEventStore, only: String?) async throws {
    let payload = Data(#"{"show":"s-1","seat":"A12","price":4200}"#.utf8)
    for (writers, batch) in [(1, 1), (8, 1), (1, 10), (8, 10)] where only == nil || only == "append" {
        let appendsPerWriter = writers == 1 ? 1_000 : 400
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<writers {
                group.addTask {
                    for i in 0..<appendsPerWriter {
                        let events = (0..<batch).map { _ in EventData(type: "Bench", data: payload) }
                        _ = try await store.append(
                            events, to: "bench\(writers)x\(batch)-\(w)-\(i % 50)", expected: .any, commandID: nil)
                    }
                }
            }
            try await group.waitForAll()
        }
        let seconds =
            Double((ContinuousClock.now - started).components.attoseconds) / 1e18
            + Double((ContinuousClock.now - started).components.seconds)
        let events = writers * appendsPerWriter * batch
        emit(
            "append writers=\(writers) eventsPerAppend=\(batch) events=\(events) seconds=\(String(format: "%.2f", seconds)) eventsPerSecond=\(Int(Double(events) / seconds))"
        )
    }
    if only == "append" { return }
    // Lag: a follower (notifications + 1 s polling) in this process, 4 writers at a steady pace.
    let head = try await store.headPosition()
    let committed = LagBook()
    let follower = store.events(after: head, pageSize: 500, mode: .follow(pollInterval: .seconds(1)))
    let total = 2_000
    let reader = Task {
        var count = 0
        for try await e in follower {
            committed.delivered(e.id)
            count += 1
            if count == total { return }
        }
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        for w in 0..<4 {
            group.addTask {
                for i in 0..<(total / 4) {
                    let e = EventData(type: "Lag", data: payload)
                    _ = try await store.append([e], to: "lag-\(w)-\(i % 20)", expected: .any, commandID: nil)
                    committed.committed(e.id)
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
        }
        try await group.waitForAll()
    }
    try await reader.value
    let lags = committed.lags().sorted()
    guard !lags.isEmpty else {
        emit("lag: no event was both committed and delivered (\(committed.counts))")
        return
    }
    func percentile(_ p: Double) -> Double { lags[min(lags.count - 1, Int(Double(lags.count) * p))] }
    emit(
        "lag events=\(lags.count) medianMs=\(String(format: "%.2f", percentile(0.5))) p99Ms=\(String(format: "%.2f", percentile(0.99))) maxMs=\(String(format: "%.2f", lags.last ?? 0))"
    )
}

/// Commit and delivery times per event id.
final class LagBook: Sendable {
    private let times = Mutex<(committed: [UUID: ContinuousClock.Instant], delivered: [UUID: ContinuousClock.Instant])>(
        ([:], [:]))
    func committed(_ id: UUID) { times.withLock { $0.committed[id] = .now } }
    func delivered(_ id: UUID) { times.withLock { $0.delivered[id] = .now } }
    var counts: String { times.withLock { "committed \($0.committed.count), delivered \($0.delivered.count)" } }
    /// Milliseconds from the append's return to delivery (negative when delivery came first:
    /// the notification can beat the writer's own acknowledgement).
    func lags() -> [Double] {
        times.withLock { t in
            t.committed.compactMap { id, c in
                guard let d = t.delivered[id] else { return nil }
                let duration = d - c
                return Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
            }
        }
    }
}

/// The `counts` projection in a PipelineService with fast lease settings (the `project` and
/// `serve` modes).
func countsService(_ store: PostgresEventStore) throws -> PipelineService {
    var leaseSettings = PostgresLeadership.Configuration()
    leaseSettings.retryInterval = .milliseconds(200)
    leaseSettings.heartbeatInterval = .milliseconds(300)
    leaseSettings.owner = "worker-\(ProcessInfo.processInfo.processIdentifier)"
    let leadership = PostgresLeadership(store: store, configuration: leaseSettings)
    var options = ProjectionOptions(batchSize: 50)
    options.pollInterval = .milliseconds(200)
    let projection = try PostgresProjection(StreamCounts(), store: store, options: options)
    return try PipelineService(store: store, projections: [projection], leadership: leadership)
}

// MARK: The `counts` read model

/// Per stream: how many events were applied and the last stream version seen. An event applied
/// twice (or skipped) makes `events` differ from `last_version`.
struct StreamCounts: PostgresReadModel {
    let name = "counts"
    let tables = ["counts"]
    let logger = Logger(label: "counts")

    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        _ = try await connection.query(
            """
            CREATE TABLE \(unescaped: try tables.table("counts")) (
                stream text PRIMARY KEY, events bigint NOT NULL, last_version bigint NOT NULL
            )
            """, logger: logger)
    }

    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws
    {
        let table = try tables.table("counts")
        _ = try await connection.query(
            """
            INSERT INTO \(unescaped: table) AS c (stream, events, last_version) VALUES (\(event.stream), 1, \(event.streamVersion))
            ON CONFLICT (stream) DO UPDATE SET events = c.events + 1, last_version = excluded.last_version
            """, logger: logger)
    }
}
