import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

struct PGNoted: Event {
    static let typeName = "PGNoted"
    var n: Int
}

enum PGNoteEvent: EventFamily {
    case noted(PGNoted)
    static let members: [EventMember<PGNoteEvent>] = [.init(PGNoted.self, PGNoteEvent.noted)]
}

struct PGNotebook: Aggregate {
    static let category = "notebook"
    init() {}
    mutating func apply(_ event: PGNoteEvent) {}
}

struct PGNote: Command {
    typealias Target = PGNotebook
    var id: String
    var n: Int
}

/// A handler that records the positions it handled (duplicates included).
struct PGRecordingHandler: EventHandler {
    let name: String
    let handled: Locked<[Int64]>
    var options: HandlerOptions {
        var o = HandlerOptions()
        o.pollInterval = .milliseconds(50)
        return o
    }
    func handle(_ event: RecordedEvent) async throws { handled.value.withLock { $0.append(event.position) } }
}

extension PostgresTests {
    @Suite("Durable pipeline defaults and strong consistency across processes")
    struct DurableDefaults {
        @Test("a handler built without checkpoints or leadership resumes after a restart: no event is handled twice")
        func handlerResumesAfterRestart() async throws {
            try await withFreshStore { store in
                let handled = Locked<[Int64]>([])
                for i in 0..<30 {
                    _ = try await store.append([event()], to: "r-\(i % 3)", expected: .any, commandID: nil)
                }
                let first = try PipelineService(
                    store: store, handlers: [PGRecordingHandler(name: "receipts", handled: handled)])
                let running = Task { try await first.run() }
                try await first.waitUntilProcessed(timeout: .seconds(30))
                first.stop()
                try await running.value
                #expect(handled.value.withLock { $0.count } == 30)

                // Another process: its own pool on the same schema, a new service.
                try await withPeer(of: store) { peer in
                    var last = LogPosition.start
                    for i in 0..<20 {
                        last = try await peer.append([event()], to: "r-\(i % 3)", expected: .any, commandID: nil)
                            .lastLogPosition
                    }
                    let second = try PipelineService(
                        store: peer, handlers: [PGRecordingHandler(name: "receipts", handled: handled)])
                    let again = Task { try await second.run() }
                    try await second.waitUntilProcessed(last, timeout: .seconds(30))
                    second.stop()
                    try await again.value
                }
                let all = handled.value.withLock { $0 }
                #expect(
                    all.count == 50,
                    "handled \(all.count) times for 50 events: the restart re-handled \(all.count - 50)")
                #expect(Set(all).count == 50)
            }
        }

        @Test(
            "two processes run a handler built without a leadership argument: it runs in only one of them",
            .timeLimit(.minutes(3)))
        func handlerInOneProcess() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                let workers = try (0..<2).map { _ in
                    try WorkerProcess(arguments: ["handle", url, store.schema.rawValue])
                }
                defer { for w in workers { w.kill() } }
                for w in workers { #expect(await w.waitForLine { $0 == "started" } != nil) }
                var positions: [Int64] = []
                var last = LogPosition.start
                for i in 0..<20 {
                    let appended = try await store.append([event()], to: "h-\(i % 4)", expected: .any, commandID: nil)
                    positions.append(appended.lastLogPosition.position)
                    last = appended.lastLogPosition
                }
                let checkpoints = PostgresCheckpointStore(store: store)
                #expect(
                    try await eventually(timeout: .seconds(30)) {
                        try await checkpoints.checkpoint("receipts")?.position == last
                    }, "the handler did not reach the last event")
                try await Task.sleep(for: .milliseconds(500))
                let handled = workers.map { w in
                    w.currentLines.compactMap { $0.hasPrefix("handled ") ? Int64($0.dropFirst(8)) : nil }
                }
                #expect(
                    handled.filter { !$0.isEmpty }.count == 1, "events handled per process: \(handled.map(\.count))")
                #expect(handled.flatMap { $0 }.sorted() == positions.sorted())
            }
        }

        @Test(
            ".strong in a process that does not lead the projection succeeds once the leading process applied; times out, with the events stored, when that process is gone",
            .timeLimit(.minutes(3)))
        func strongAcrossProcesses() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                let worker = try WorkerProcess(arguments: ["project", url, store.schema.rawValue])
                defer { worker.kill() }
                #expect(await worker.waitForLine { $0 == "started" } != nil)
                #expect(
                    try await eventually(timeout: .seconds(30)) { try await leaseToken(store, "counts@v1") != nil },
                    "the worker did not take the projection's lease")

                var router = Router()
                try router.route(PGNote.self, id: \.id) { _, c in [.noted(PGNoted(n: c.n))] }
                let app = BackstageApp(store: store, router: router)
                let projection = try PostgresProjection(CountsModel(), store: store)
                let service = try PipelineService(app: app, projections: [projection])
                let running = Task { try await service.run() }
                try await Task.sleep(for: .milliseconds(500))
                #expect(service.status(of: "counts") == nil, "this process must not lead the projection")
                for i in 1...5 {
                    try await app.dispatch(PGNote(id: "a", n: i), options: DispatchOptions(consistency: .strong))
                    #expect(
                        try await readCounts(store)["notebook-a"] == [Int64(i), Int64(i)], "read right after .strong")
                }
                try await app.dispatch(
                    PGNote(id: "a", n: 6),
                    options: DispatchOptions(consistency: .projections(["counts"]), timeout: .seconds(10)))
                #expect(try await readCounts(store)["notebook-a"] == [6, 6])

                // This process stops being a candidate (cancelled: it waits for the lease), and
                // the leader dies: nobody applies any more.
                running.cancel()
                try? await running.value
                worker.kill()
                await worker.process.exited()
                await #expect {
                    try await app.dispatch(
                        PGNote(id: "a", n: 7),
                        options: DispatchOptions(consistency: .strong, timeout: .milliseconds(800)))
                } throws: { error in
                    guard case ConsistencyError.timeout = error else { return false }
                    return "\(error)".contains("the events were stored")
                }
                #expect(try await store.streamVersion("notebook-a") == 7, "the events were stored")
            }
        }
    }
}
