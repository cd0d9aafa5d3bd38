import Backstage
import BackstagePostgres
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// The scale-out figure (issue 13): a handler whose work is 20 ms of waiting per event (a slow
/// external call), split into 8 partitions, processed by 1, 2 and 4 processes sharing them over
/// PostgreSQL; events per second and the ratio to one process. Then one of the four processes
/// is killed (SIGKILL) and the time until its partitions run elsewhere is measured.
///
/// Each process makes one external call at a time (a client with one connection), so the
/// processes, not the partitions inside one process, are the unit of parallelism measured.
enum ScaleOut {
    static let partitions = 8
    static let workMillis = 20
    static let leaseMillis = 2_000

    /// `backstage-bench scale-out-worker <url> <schema> <handler name>`: runs the slow handler
    /// with its partitions shared with the other processes, until killed.
    static func worker(_ arguments: [String]) async throws {
        guard arguments.count == 5 else {
            FileHandle.standardError.write(Data("usage: scale-out-worker <url> <schema> <name>\n".utf8))
            exit(2)
        }
        var configuration = PostgresEventStore.Configuration()
        configuration.schema = arguments[3]
        configuration.maximumConnections = 4
        configuration.logger = Logger(label: "scale-out") { _ in SwiftLogNoOpLogHandler() }
        let store = try PostgresEventStore(url: arguments[2], configuration: configuration)
        var lease = PostgresLeadership.Configuration()
        lease.heartbeatInterval = .milliseconds(250)
        lease.retryInterval = .milliseconds(200)
        lease.partitionLease = .milliseconds(leaseMillis)
        lease.owner = "bench-\(ProcessInfo.processInfo.processIdentifier)"
        let leadership = PostgresLeadership(store: store, configuration: lease)
        let handler = SlowHandler(name: arguments[4])
        let service = try PipelineService(
            store: store, handlers: [handler], leadership: leadership,
            logger: Logger(label: "scale-out") { _ in SwiftLogNoOpLogHandler() })
        try await service.run()
    }

    /// Runs the figure against `url` in a fresh schema, records it in `report`.
    static func run(url: String, report: Report, events: Int) async throws {
        let schema = "bench_scaleout_\(UInt32.random(in: 0...UInt32.max))"
        var configuration = PostgresEventStore.Configuration()
        configuration.schema = schema
        let store = try PostgresEventStore(url: url, configuration: configuration)
        var single: Double?
        for processes in [1, 2, 4] {
            let name = "slow-\(processes)"
            let workers = try (0..<processes).map { _ in try spawn(url: url, schema: schema, name: name) }
            defer { for w in workers where w.isRunning { kill(w.processIdentifier, SIGKILL) } }
            // Wait until the processes share the partitions evenly, then append the work.
            try await until(timeout: .seconds(60)) {
                let owners = try await partitionOwners(store, base: name)
                let perOwner = Dictionary(grouping: owners.values, by: { $0 }).mapValues(\.count)
                return owners.count == partitions && perOwner.count == processes
                    && perOwner.values.allSatisfy { $0 >= partitions / processes }
            }
            // Every partition has committed its start (the end of the log): only the events
            // appended from now on are its work.
            let checkpoints = store.pipelineDefaults.checkpoints
            try await until(timeout: .seconds(60)) {
                try await committedPosition(of: name, partitions: partitions, in: checkpoints) != nil
            }
            let started = ContinuousClock.now
            var last = LogPosition.start
            var appended = 0
            while appended < events {
                // Two events per stream, many streams: the partitions get even shares of the work.
                let batch = (0..<min(2, events - appended)).map { i in
                    EventData(type: "Work", data: Data(#"{"n":\#(appended + i)}"#.utf8))
                }
                last = try await store.append(batch, to: "work-\(appended / 2)", expected: .any, commandID: nil)
                    .lastLogPosition
                appended += batch.count
            }
            try await until(timeout: .seconds(600)) {
                try await committedPosition(of: name, partitions: partitions, in: checkpoints).map { $0 >= last }
                    ?? false
            }
            let elapsed = ContinuousClock.now - started
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let rate = Double(events) / seconds
            if processes == 1 { single = rate }
            let ratio = single.map { rate / $0 } ?? 1
            report.figure(
                "scale-out: 20 ms handler, \(processes) process\(processes == 1 ? "" : "es")", store: "postgres",
                value: rate, unit: "events/s",
                note: String(
                    format:
                        "%d events (2 per stream), %d partitions, one call at a time per process; %.2fx one process",
                    events,
                    partitions, ratio))
            print(String(format: "scale-out: %d process(es): %.1f events/s, %.2fx one process", processes, rate, ratio))

            if processes == 4 {
                // Kill one; time until every partition is owned by a live process again.
                let victim = workers[0]
                kill(victim.processIdentifier, SIGKILL)
                let killedAt = ContinuousClock.now
                let dead = "bench-\(victim.processIdentifier)"
                try await until(timeout: .seconds(60)) {
                    let owners = try await partitionOwners(store, base: name)
                    return owners.count == partitions && !owners.values.contains(dead)
                }
                let rebalance = ContinuousClock.now - killedAt
                let r = Double(rebalance.components.seconds) + Double(rebalance.components.attoseconds) / 1e18
                report.figure(
                    "scale-out: rebalance after SIGKILL", store: "postgres", value: r, unit: "s",
                    note: "4 processes, one killed; partition lease \(leaseMillis) ms, heartbeat 250 ms")
                print(String(format: "scale-out: partitions rebalanced %.2f s after SIGKILL", r))
            }
        }
        _ = try? await store.client.query("DROP SCHEMA IF EXISTS \(unescaped: schema) CASCADE")
        await store.close()
    }

    private static func spawn(url: String, schema: String, name: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(
            fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        process.arguments = ["scale-out-worker", url, schema, name]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    private static func partitionOwners(_ store: PostgresEventStore, base: String) async throws -> [String: String] {
        let rows = try await store.client.query(
            """
            SELECT subscription, owner FROM \(unescaped: store.schema.rawValue).leases
            WHERE subscription LIKE \(base + "#%") AND expires_at > now()
            """)
        var owners: [String: String] = [:]
        for try await (s, o) in rows.decode((String, String).self) {
            owners[s] = String(o.prefix { $0 != "/" })
        }
        return owners
    }

    private static func until(timeout: Duration, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw ScaleOutTimeout() }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

struct ScaleOutTimeout: Error, CustomStringConvertible {
    var description: String { "the scale-out workload did not finish in time" }
}

/// 20 ms of waiting per event, one call at a time in this process.
struct SlowHandler: EventHandler {
    let name: String
    var filter: EventFilter { EventFilter(types: ["Work"]) }
    var options: HandlerOptions {
        var o = HandlerOptions(start: .end, partitions: ScaleOut.partitions)
        o.pollInterval = .milliseconds(100)
        o.checkpointInterval = .milliseconds(50)
        return o
    }
    func handle(_ event: RecordedEvent) async throws {
        await SerialClient.shared.call(milliseconds: ScaleOut.workMillis)
    }
}

/// A client that makes one call at a time (FIFO).
final class SerialClient: Sendable {
    static let shared = SerialClient()
    private let state = Mutex<(busy: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func call(milliseconds: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.busy {
                    s.waiting.append(c)
                    return false
                }
                s.busy = true
                return true
            }
            if now { c.resume() }
        }
        try? await Task.sleep(for: .milliseconds(milliseconds))
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiting.isEmpty {
                s.busy = false
                return nil
            }
            return s.waiting.removeFirst()
        }
        next?.resume()
    }
}
