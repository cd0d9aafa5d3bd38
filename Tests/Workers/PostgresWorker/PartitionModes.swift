import Backstage
import BackstagePostgres
import BackstageTestSupport
import Foundation
import Logging
import PostgresNIO

/// `partitioned <url> <schema> <partitions> <lease ms>`: the `plog` projection split into
/// <partitions> partitions, run by a PipelineService with partition leases of <lease ms>; prints
/// `started`, then `log <level> <message> <metadata>` for every notice and above of the pipelines
/// and the election (lease lost, fenced commits, partitions taken or given back), and every second
/// `view ...` (the election's partitions, the live runners), until killed.
func runPartitionedMode(_ arguments: [String]) async throws {
    guard arguments.count == 6, let partitions = Int(arguments[4]), let leaseMillis = Int(arguments[5]) else {
        fail("usage: partitioned <url> <schema> <partitions> <lease ms>")
    }
    let logger = Logger(label: "partitioned") { _ in EmitLogHandler() }
    var configuration = storeConfiguration(schema: arguments[3])
    configuration.logger = logger
    try await PostgresEventStore.withStore(url: arguments[2], configuration: configuration) { store in
        var leaseSettings = PostgresLeadership.Configuration()
        leaseSettings.retryInterval = .milliseconds(200)
        leaseSettings.heartbeatInterval = .milliseconds(250)
        leaseSettings.partitionLease = .milliseconds(leaseMillis)
        leaseSettings.owner = "worker-\(ProcessInfo.processInfo.processIdentifier)"
        let leadership = PostgresLeadership(store: store, configuration: leaseSettings)
        var options = ProjectionOptions(batchSize: 20)
        options.pollInterval = .milliseconds(200)
        options.partitions = partitions
        let projection = try PostgresProjection(AppliedLog(), store: store, options: options)
        let service = try PipelineService(
            store: store, projections: [projection], leadership: leadership, logger: logger)
        emit("started")
        // Every second, this process's view (for the test's report when partitions stall): the
        // election's partitions and the live runners.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(1))
                    let runners = service.status().map { status in
                        "\(status.subscription):\(status.state):\(status.checkpoint.map { "\($0.position)" } ?? "-")"
                    }
                    emit("view \(leadership.partitionView()) runners=[\(runners.joined(separator: ","))]")
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }
}

/// Prints notices and above as `log ...` lines on standard output, for the test to read.
struct EmitLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    var metadataProvider: Logger.MetadataProvider?

    func log(event: LogEvent) {
        guard event.level >= .info else { return }
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        emit("log \(event.level) \(event.message) \(fields)")
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
}

/// One row per applied event, with the applying process and the order of application (`seq`);
/// an event applied twice counts in `dupes` instead of failing.
struct AppliedLog: PostgresReadModel {
    let name = "plog"
    let tables = ["applied"]
    let logger = Logger(label: "plog")
    let pid = Int32(ProcessInfo.processInfo.processIdentifier)

    func createTables(on connection: PostgresConnection, tables: PostgresProjectionTables) async throws {
        _ = try await connection.query(
            """
            CREATE TABLE \(unescaped: try tables.table("applied")) (
                position bigint PRIMARY KEY, stream text NOT NULL, stream_version bigint NOT NULL,
                pid integer NOT NULL, seq bigserial, dupes integer NOT NULL DEFAULT 0
            )
            """, logger: logger)
    }

    func apply(_ event: RecordedEvent, on connection: PostgresConnection, tables: PostgresProjectionTables) async throws
    {
        _ = try await connection.query(
            """
            INSERT INTO \(unescaped: try tables.table("applied")) AS a (position, stream, stream_version, pid)
            VALUES (\(event.position), \(event.stream), \(event.streamVersion), \(pid))
            ON CONFLICT (position) DO UPDATE SET dupes = a.dupes + 1
            """, logger: logger)
    }
}
