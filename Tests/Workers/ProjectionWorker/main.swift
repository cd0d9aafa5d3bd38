// A child process for the projection crash test: projects the events of an SQLite event store
// into tables of the same file. Arguments: <path> <run|finish> <batch size>.
//   run:    projects until killed, printing "applied <position>" every 100 applied events
//           (printed inside the batch's transaction, so a kill often lands mid-transaction);
//   finish: projects up to the head of the log, prints "done <checkpoint>" and exits.
import Backstage
import BackstageSQLite
import BackstageTestSupport
import Foundation
import GRDB
import Synchronization

let appliedCount = Atomic<Int>(0)

/// Prints "applied <position>" every 100 applied events (inside the batch's transaction).
@Sendable func report(_ event: RecordedEvent) {
    if appliedCount.add(1, ordering: .relaxed).newValue % 100 == 0 {
        FileHandle.standardOutput.write(Data("applied \(event.position)\n".utf8))
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 4, let batchSize = Int(arguments[3]) else {
    FileHandle.standardError.write(Data("usage: backstage-projection-worker <path> <run|finish> <batch size>\n".utf8))
    exit(2)
}
var configuration = SQLiteEventStore.Configuration()
configuration.durability = .normal
let store = try SQLiteEventStore(path: arguments[1], configuration: configuration)
let projection = try SQLiteProjection(
    CrashReadModel(onApplied: arguments[2] == "run" ? report : nil), database: store.database,
    options: ProjectionOptions(batchSize: batchSize, batchTimeout: .zero))
let service = try PipelineService(store: store, projections: [projection])
let task = Task { try await service.run() }
if arguments[2] == "finish" {
    try await service.waitUntilProcessed(timeout: .seconds(300))
    service.stop()
    try await task.value
    let checkpoint = try await projection.checkpoints.checkpoint(projectionSubscription("crash", version: 1))
    print("done \(checkpoint.map { "\($0.position)" } ?? "none")")
} else {
    try await task.value
}
