import Backstage
import BackstageTestSupport
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    @Suite("Several application processes")
    struct MultiProcess {
        @Test(
            "failover: 3 processes run one projection; the leader's backend is terminated; another takes over, the checkpoint never goes backwards, the read model equals a rebuild",
            .timeLimit(.minutes(5)))
        func failover() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                // The schema and the projection's tables exist before the processes start.
                let workers = try (0..<3).map { _ in
                    try WorkerProcess(arguments: ["project", url, store.schema.rawValue])
                }
                defer { for w in workers { w.kill() } }
                for w in workers { #expect(await w.waitForLine { $0 == "started" } != nil) }

                // Watch the checkpoint: it must never move backwards.
                let history = Locked<[LogPosition]>([])
                let watcher = Task {
                    let checkpoints = PostgresCheckpointStore(store: store)
                    while !Task.isCancelled {
                        if let c = try? await checkpoints.checkpoint("counts@v1") {
                            history.value.withLock { h in if h.last != c.position { h.append(c.position) } }
                        }
                        try? await Task.sleep(for: .milliseconds(20))
                    }
                }
                defer { watcher.cancel() }

                @discardableResult
                func append(_ rounds: Range<Int>) async throws -> LogPosition {
                    var last = LogPosition.start
                    for i in rounds {
                        let n = 1 + i % 4
                        last = try await store.append(
                            (0..<n).map { _ in event("Counted", #"{"i":\#(i)}"#) }, to: "f-\(i % 11)", expected: .any,
                            commandID: nil
                        ).lastLogPosition
                    }
                    return last
                }
                try await append(0..<150)
                #expect(try await eventually(timeout: .seconds(30)) { try await leaseToken(store, "counts@v1") != nil })
                let firstToken = try #require(try await leaseToken(store, "counts@v1"))
                #expect(try await eventually(timeout: .seconds(30)) { history.value.withLock { !$0.isEmpty } })

                // Terminate the leader's lease connection while events keep coming.
                let pid = try #require(try await leaseHolderPID(store, "counts@v1"))
                let writer = Task { try await append(150..<400) }
                _ = try await store.client.query("SELECT pg_terminate_backend(\(pid))")
                let terminatedAt = ContinuousClock.now
                #expect(
                    try await eventually(timeout: .seconds(10)) {
                        let token = try await leaseToken(store, "counts@v1") ?? 0
                        let holder = try await leaseHolderPID(store, "counts@v1")
                        return token > firstToken && holder != nil && holder != pid
                    }, "no other process took over")
                let takeover = ContinuousClock.now - terminatedAt
                #expect(takeover < .seconds(5), "takeover took \(takeover)")
                // The new leader catches up to the last append. (Not to a head read right now:
                // the projection's own open transaction may hold the read horizon below it.)
                let head = try await writer.value
                #expect(
                    try await eventually(timeout: .seconds(60)) {
                        (try await PostgresCheckpointStore(store: store).checkpoint("counts@v1"))?.position == head
                    }, "the projection did not catch up after the failover")
                let positions = history.value.withLock { $0 }
                #expect(zip(positions, positions.dropFirst()).allSatisfy { $0 < $1 }, "the checkpoint moved backwards")
                let model = try await readCounts(store)
                let rebuilt = try await rebuildCounts(store)
                if model != rebuilt {
                    let all = try await store.readAll(after: .start, limit: 5_000, filter: .all)
                    let missing = all.filter { e in (model[e.stream]?[1] ?? 0) < e.streamVersion }
                    Issue.record(
                        "read model differs from a rebuild: missing \(missing.map { "\($0.stream)@\($0.streamVersion) \($0.logPosition)" }.prefix(8)); head \(head); checkpoints \(positions.suffix(6)); first token \(firstToken), now \(try await leaseToken(store, "counts@v1") ?? -1)"
                    )
                }
                #expect(model.values.allSatisfy { $0[0] == $0[1] }, "an event was applied twice or skipped")
            }
        }

        @Test(
            "two application processes sell tickets for the same shows: conflicts are retried or surfaced, no show is oversold",
            .timeLimit(.minutes(5)))
        func noOversell() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                let shows = 4
                let capacity = 30
                let sellers = try (0..<2).map { _ in
                    try WorkerProcess(arguments: ["sell", url, store.schema.rawValue, "\(shows)", "\(capacity)", "200"])
                }
                defer { for s in sellers { s.kill() } }
                var sold = 0
                var soldOut = 0
                for s in sellers {
                    let result = try #require(await s.waitForLine { $0.hasPrefix("result ") })
                    var fields: [String: Int] = [:]
                    for part in result.split(separator: " ").dropFirst() {
                        let kv = part.split(separator: "=")
                        if kv.count == 2 { fields[String(kv[0])] = Int(kv[1]) }
                    }
                    #expect(fields["errors"] == 0, "\(result)")
                    sold += fields["sold"] ?? 0
                    soldOut += fields["soldOut"] ?? 0
                }
                var perShow: [String: Int] = [:]
                let events = try await store.readAll(
                    after: .start, limit: 1_000, filter: EventFilter(types: ["TicketSold"]))
                for e in events { perShow[e.stream, default: 0] += 1 }
                #expect(perShow.values.allSatisfy { $0 <= capacity }, "oversold: \(perShow)")
                #expect(events.count == sold, "the processes report \(sold) sales, the log has \(events.count)")
                // 400 attempts for 120 seats: every show sells out, and the rest are refused.
                #expect(sold == shows * capacity)
                #expect(soldOut > 0)
                for show in 0..<shows {
                    let versions = try await store.readStream(
                        "show-s\(show)", from: 1, direction: .forward, limit: 1_000)
                    #expect(versions.map(\.streamVersion) == Array(1...Int64(capacity)))
                }
            }
        }
    }
}

extension PostgresTests {
    @Suite("Several processes: rebuild and shutdown")
    struct MultiProcessPipelines {
        @Test(
            "SIGTERM stops every process within a bound, the leader and the standby alike",
            .timeLimit(.minutes(2)))
        func sigtermStopsLeaderAndStandby() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                _ = try await PostgresProjection(CountsModel(), store: store).activeVersion()
                let workers = try (0..<2).map { _ in
                    try WorkerProcess(arguments: ["serve", url, store.schema.rawValue])
                }
                defer { for w in workers { w.kill() } }
                for w in workers { #expect(await w.waitForLine { $0 == "started" } != nil) }
                var last = LogPosition.start
                for i in 0..<30 {
                    last = try await store.append([event("Counted")], to: "t-\(i % 3)", expected: .any, commandID: nil)
                        .lastLogPosition
                }
                #expect(
                    try await eventually(timeout: .seconds(30)) {
                        (try await PostgresCheckpointStore(store: store).checkpoint("counts@v1"))?.position == last
                    }, "nobody leads the projection")
                // Both run now: one leads, the other waits for the lease. The standby stops first,
                // while the leader keeps its lease; then the leader.
                let owners = try await store.client.query(
                    "SELECT owner FROM \(unescaped: store.schema.rawValue).leases WHERE subscription = 'counts@v1'")
                var owner = ""
                for try await o in owners.decode(String.self) { owner = o }
                let leaderIndex = try #require(
                    workers.firstIndex { owner == "worker-\($0.process.processIdentifier)" }, "lease owner \(owner)")
                let standby = workers[1 - leaderIndex]
                let leader = workers[leaderIndex]
                #expect(workers.allSatisfy { $0.process.isRunning })
                for (role, w) in [("standby", standby), ("leader", leader)] {
                    let signalled = ContinuousClock.now
                    w.kill(SIGTERM)
                    #expect(
                        try await eventually(timeout: .seconds(10)) { !w.process.isRunning },
                        "the \(role) still runs \(ContinuousClock.now - signalled) after SIGTERM")
                    if role == "standby" { #expect(leader.process.isRunning) }
                }
                for w in workers where !w.process.isRunning {
                    #expect(w.process.terminationReason == .exit && w.process.terminationStatus == 0)
                    #expect(await w.allLines().contains("exited"))
                }
            }
        }

        @Test(
            "rebuild with two processes: B leads v1, A rebuilds into v2 and activates; B moves to v2 without parking, and keeps up after A stops",
            .timeLimit(.minutes(3)))
        func rebuildAcrossProcesses() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                _ = try await PostgresProjection(CountsModel(), store: store).activeVersion()
                let b = try WorkerProcess(arguments: ["serve", url, store.schema.rawValue])
                defer { b.kill() }
                #expect(await b.waitForLine { $0 == "started" } != nil)
                func append(_ rounds: Range<Int>) async throws -> LogPosition {
                    var last = LogPosition.start
                    for i in rounds {
                        last = try await store.append(
                            (0..<(1 + i % 3)).map { _ in event("Counted") }, to: "rb-\(i % 7)", expected: .any,
                            commandID: nil
                        ).lastLogPosition
                    }
                    return last
                }
                let checkpoints = PostgresCheckpointStore(store: store)
                let first = try await append(0..<100)
                #expect(
                    try await eventually(timeout: .seconds(30)) {
                        (try await checkpoints.checkpoint("counts@v1"))?.position == first
                    }, "B does not lead version 1")

                // A: this process, with its own election; its live subscription waits for B's lease.
                var settings = PostgresLeadership.Configuration()
                settings.retryInterval = .milliseconds(100)
                settings.heartbeatInterval = .milliseconds(200)
                var options = ProjectionOptions(batchSize: 50)
                options.pollInterval = .milliseconds(100)
                let a = try PipelineService(
                    store: store, projections: [try PostgresProjection(CountsModel(), store: store, options: options)],
                    leadership: PostgresLeadership(store: store, configuration: settings))
                let runningA = Task { try await a.run() }
                #expect(try await a.rebuild(projection: "counts") == 2)
                _ = try await append(100..<150)
                a.stop()
                try await runningA.value

                let last = try await append(150..<200)
                #expect(
                    try await eventually(timeout: .seconds(60)) {
                        (try await checkpoints.checkpoint("counts@v2"))?.position == last
                    }, "nobody maintains version 2 after A stopped")
                let parked = try await PostgresParkedEventStore(store: store).parkedEvents(subscription: nil, limit: 10)
                #expect(parked.isEmpty, "parked: \(parked.map { "\($0.subscription) \($0.event.logPosition)" })")
                #expect(try await checkpoints.checkpoint("counts@v1") == nil)
                #expect(try await readCounts(store) == (try await rebuildCounts(store)))
                #expect(b.process.isRunning)
            }
        }
    }
}
