// Modes of the PostgreSQL worker for durable pipeline defaults (see main.swift for the others):
//
//   handle <url> <schema>
//       Runs the handler `receipts` in a PipelineService built without checkpoints, parked
//       events or leadership (the store's defaults: its schema and lease leadership); prints
//       `started`, then `handled <position>` per event, until killed or SIGTERM.
import Backstage
import BackstagePostgres
import Foundation

struct ReceiptsHandler: EventHandler {
    let name = "receipts"
    let options: HandlerOptions
    func handle(_ event: RecordedEvent) async throws {
        FileHandle.standardOutput.write(Data("handled \(event.position)\n".utf8))
    }
}

func runHandleMode(_ arguments: [String]) async throws {
    guard arguments.count == 4 else { fail("usage: handle <url> <schema>") }
    try await PostgresEventStore.withStore(url: arguments[2], configuration: storeConfiguration(schema: arguments[3])) {
        store in
        var options = HandlerOptions()
        options.pollInterval = .milliseconds(100)
        options.checkpointInterval = .zero
        let service = try PipelineService(store: store, handlers: [ReceiptsHandler(options: options)])
        signal(SIGTERM, SIG_IGN)
        let terminate = DispatchSource.makeSignalSource(signal: SIGTERM)
        terminate.setEventHandler { service.stop() }
        terminate.resume()
        FileHandle.standardOutput.write(Data("started\n".utf8))
        try await service.run()
    }
}
