// A child process for the SQLite multi-process pipeline tests: one more application process on
// the same SQLite file, with a PipelineService built without checkpoints, parked events or
// leadership (so it gets the store's durable defaults). Modes:
//
//   project <path>
//       Runs the `sums` projection (table `sums`: total of `by` per stream, for `TallyBumped`
//       events) until killed or SIGTERM; prints `started`, then `leading` once it runs it.
//
//   handle <path>
//       Runs the handler `receipts`, printing `handled <position>` per event, until killed or
//       SIGTERM; prints `started`.
import Backstage
import BackstageSQLite
import BackstageTestSupport
import Foundation
import GRDB

func fail(_ message: String) -> Never { fail(message, worker: "backstage-sqlite-worker") }

// Exit with the test process that started us (a killed test must not leave workers behind).
exitWithParent()

struct Receipts: EventHandler {
    let name = "receipts"
    let options: HandlerOptions
    func handle(_ event: RecordedEvent) async throws { emit("handled \(event.position)") }
}

let arguments = CommandLine.arguments
guard arguments.count == 3 else { fail("usage: backstage-sqlite-worker <project|handle> <path>") }
let store = try SQLiteEventStore(path: arguments[2])
let service: PipelineService
switch arguments[1] {
case "project":
    var options = ProjectionOptions(batchSize: 50)
    options.pollInterval = .milliseconds(100)
    service = try PipelineService(
        store: store, projections: [try SQLiteProjection(SQLiteSumsModel(), database: store.database, options: options)]
    )
    Task {
        while service.status(of: "sums") == nil { try await Task.sleep(for: .milliseconds(20)) }
        emit("leading")
    }
case "handle":
    var options = HandlerOptions()
    options.pollInterval = .milliseconds(100)
    options.checkpointInterval = .zero
    service = try PipelineService(store: store, handlers: [Receipts(options: options)])
default:
    fail("unknown mode \(arguments[1])")
}
signal(SIGTERM, SIG_IGN)
let terminate = DispatchSource.makeSignalSource(signal: SIGTERM)
terminate.setEventHandler { service.stop() }
terminate.resume()
emit("started")
try await service.run()
try await store.close()
emit("stopped")
