import Backstage
import BackstageTestSupport
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

/// One event as a subscriber delivered it.
struct Delivered: Sendable, Hashable {
    var transaction: UInt64
    var position: Int64
    var stream: String
    var version: Int64
    var id: UUID
    /// Wall clock time of delivery.
    var at: Date

    var logPosition: LogPosition { LogPosition(transaction: transaction, position: position) }

    /// Parses a worker line `E <tx> <pos> <stream> <version> <id> <ns>`.
    init?(line: String) {
        let f = line.split(separator: " ")
        guard f.count == 7, f[0] == "E", let tx = UInt64(f[1]), let pos = Int64(f[2]), let version = Int64(f[4]),
            let id = UUID(uuidString: String(f[5])), let ns = Int64(f[6])
        else { return nil }
        self.init(
            transaction: tx, position: pos, stream: String(f[3]), version: version, id: id,
            at: Date(timeIntervalSince1970: Double(ns) / 1e9))
    }

    init(_ event: RecordedEvent, at: Date = Date()) {
        self.init(
            transaction: event.transaction, position: event.position, stream: event.stream,
            version: event.streamVersion, id: event.id, at: at)
    }

    init(transaction: UInt64, position: Int64, stream: String, version: Int64, id: UUID, at: Date) {
        self.transaction = transaction
        self.position = position
        self.stream = stream
        self.version = version
        self.id = id
        self.at = at
    }
}

/// Checks what a subscriber delivered against the committed events: exactly those, none twice,
/// in strictly increasing log order, each stream's versions consecutive from 1.
func checkDelivery(_ delivered: [Delivered], committed: Set<UUID>, subscriber: String) {
    let ids = delivered.map(\.id)
    #expect(Set(ids).count == ids.count, "\(subscriber): some events were delivered twice")
    let missing = committed.subtracting(ids)
    let extra = Set(ids).subtracting(committed)
    #expect(missing.isEmpty, "\(subscriber): \(missing.count) committed events were skipped")
    #expect(extra.isEmpty, "\(subscriber): \(extra.count) delivered events were never committed")
    var outOfOrder: [String] = []
    for (index, (a, b)) in zip(delivered, delivered.dropFirst()).enumerated() where !(a.logPosition < b.logPosition) {
        outOfOrder.append(
            "#\(index + 1) \(b.logPosition) \(b.stream)@\(b.version) after \(a.logPosition) \(a.stream)@\(a.version)")
    }
    #expect(outOfOrder.isEmpty, "\(subscriber): \(outOfOrder.count) events out of log order: \(outOfOrder.prefix(5))")
    var versions: [String: Int64] = [:]
    var streamOrderBroken = 0
    for d in delivered {
        let expected = (versions[d.stream] ?? 0) + 1
        if d.version != expected { streamOrderBroken += 1 }
        versions[d.stream] = d.version
    }
    #expect(streamOrderBroken == 0, "\(subscriber): \(streamOrderBroken) events broke their stream's order")
}

/// Thrown by the test hook to roll an append back on purpose.
struct RolledBackOnPurpose: Error {}

/// An append hook that rolls the transaction back after the events were inserted.
@Sendable func rollBackHook(_ stage: PostgresEventStore.AppendStage) async throws {
    throw RolledBackOnPurpose()
}

extension PostgresTests {
    @Suite("Global order without a global lock")
    struct Ordering {
        @Test(
            "16 writers, 10,000 appends, 1% rolled back; 2 subscriber processes see exactly the committed events in one order",
            .timeLimit(.minutes(10)))
        func orderingUnderLoad() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore(configure: { $0.maximumConnections = 20 }) { store in
                let schema = store.schema.rawValue
                let subscribers = try (0..<2).map { _ in
                    try WorkerProcess(arguments: ["subscribe", url, schema, "500"])
                }
                defer { for s in subscribers { s.kill() } }
                for s in subscribers {
                    #expect(await s.waitForLine { $0 == "ready" } != nil, "a subscriber did not start")
                }

                let appends = Locked(0)
                let committed = Locked(Set<UUID>())
                let rolledBack = Locked(Set<UUID>())
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writer in 0..<16 {
                        group.addTask {
                            var rng = SystemRandomNumberGenerator()
                            while true {
                                let n = appends.value.withLock { n -> Int? in
                                    guard n < 10_000 else { return nil }
                                    n += 1
                                    return n
                                }
                                guard let n else { return }
                                let count = Int.random(in: 1...10, using: &rng)
                                let events = (0..<count).map { i in
                                    event("Loaded", #"{"writer":\#(writer),"append":\#(n),"i":\#(i)}"#)
                                }
                                // Few streams: writers often meet on the same stream.
                                let stream = "load-\(Int.random(in: 0..<64, using: &rng))"
                                let rollBack = n % 100 == 0
                                let hook: (@Sendable (PostgresEventStore.AppendStage) async throws -> Void)? =
                                    rollBack ? rollBackHook : nil
                                do {
                                    _ = try await store.append(
                                        events, to: stream, expected: .any, commandID: UUID(), hook: hook)
                                    #expect(!rollBack)
                                    committed.value.withLock { $0.formUnion(events.map(\.id)) }
                                } catch is RolledBackOnPurpose {
                                    rolledBack.value.withLock { $0.formUnion(events.map(\.id)) }
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let end = event("end")
                _ = try await store.append([end], to: "control-end", expected: .noStream, commandID: nil)
                committed.value.withLock { _ = $0.insert(end.id) }

                let committedIDs = committed.value.withLock { $0 }
                let rolledBackIDs = rolledBack.value.withLock { $0 }
                #expect(!rolledBackIDs.isEmpty)
                #expect(rolledBackIDs.isDisjoint(with: committedIDs))

                var outputs: [[Delivered]] = []
                for (index, s) in subscribers.enumerated() {
                    let lines = await s.allLines()
                    #expect(
                        lines.last?.hasPrefix("done") == true, "subscriber \(index) did not finish: \(lines.suffix(3))")
                    outputs.append(lines.compactMap(Delivered.init(line:)))
                    let file = FileManager.default.temporaryDirectory.appendingPathComponent(
                        "\(schema)-subscriber-\(index).txt")
                    try lines.joined(separator: "\n").write(to: file, atomically: false, encoding: .utf8)
                }
                for (index, delivered) in outputs.enumerated() {
                    checkDelivery(delivered, committed: committedIDs, subscriber: "subscriber \(index)")
                }
                let sameOrder = outputs[0].map(\.id) == outputs[1].map(\.id)
                #expect(sameOrder, "the subscribers saw different orders")
                // And the order is the store's own.
                var stored: [UUID] = []
                var position = LogPosition.start
                while true {
                    let page = try await store.readAll(after: position, limit: 5_000, filter: .all)
                    guard let last = page.last else { break }
                    stored += page.map(\.id)
                    position = last.logPosition
                }
                let storeOrder = stored == outputs[0].map(\.id)
                #expect(storeOrder, "the subscribers' order is not the store's")
            }
        }

        @Test(
            "a transaction held open 20 s: subscribers wait for it, skip nothing, deliver it within 2 s of its commit",
            .timeLimit(.minutes(3)))
        func slowTransaction() async throws {
            try await withFreshStore { store in
                let deliveries = [Locked<[Delivered]>([]), Locked<[Delivered]>([])]
                let subscribers = deliveries.map { box in
                    Task {
                        let follower = store.events(mode: .follow(pollInterval: .milliseconds(500)))
                        for try await e in follower {
                            box.value.withLock { $0.append(Delivered(e)) }
                            if e.type == "end" { return }
                        }
                    }
                }
                defer { for s in subscribers { s.cancel() } }

                _ = try await store.append([event("Before")], to: "slow-0", expected: .any, commandID: nil)
                let slowTransaction = Locked<UInt64?>(nil)
                let slowEvent = event("Slow")
                let slow = Task {
                    try await store.append(
                        [slowEvent], to: "slow-1", expected: .any, commandID: nil,
                        hook: { stage in
                            if case .inserted(let tx) = stage { slowTransaction.value.withLock { $0 = tx } }
                            // The scenario: the transaction stays open for 20 seconds.
                            try await Task.sleep(for: .seconds(20))
                        })
                }
                #expect(try await eventually { slowTransaction.value.withLock { $0 } != nil })
                // Others commit meanwhile.
                var others = Set<UUID>()
                for i in 0..<200 {
                    let e = event("During", #"{"i":\#(i)}"#)
                    others.insert(e.id)
                    _ = try await store.append([e], to: "fast-\(i % 10)", expected: .any, commandID: nil)
                }
                // Every subscriber has the event from before, and a poll cycle has passed since
                // the others committed: none of them may be delivered while the slow one is open.
                #expect(try await eventually { deliveries.allSatisfy { $0.value.withLock { $0.count } >= 1 } })
                try await Task.sleep(for: .seconds(1))
                for (index, box) in deliveries.enumerated() {
                    let duringHold = box.value.withLock { $0 }
                    #expect(
                        duringHold.map(\.stream) == ["slow-0"],
                        "subscriber \(index) did not wait: \(duringHold.count) delivered")
                }
                let head = try await store.headPosition()
                #expect(head.transaction < (slowTransaction.value.withLock { $0 } ?? 0))
                let result = try await slow.value
                let committedAt = Date()
                let slowTx = try #require(slowTransaction.value.withLock { $0 })
                #expect(result.transaction == slowTx)
                let end = event("end")
                _ = try await store.append([end], to: "slow-end", expected: .any, commandID: nil)
                for s in subscribers { try await s.value }

                let all = try await store.readAll(after: .start, limit: 1_000, filter: .all)
                let committed = Set(all.map(\.id))
                #expect(committed.isSuperset(of: others.union([slowEvent.id, end.id])))
                for (index, box) in deliveries.enumerated() {
                    let delivered = box.value.withLock { $0 }
                    checkDelivery(delivered, committed: committed, subscriber: "subscriber \(index)")
                    let slowDelivery = try #require(delivered.first { $0.id == slowEvent.id })
                    let lag = slowDelivery.at.timeIntervalSince(committedAt)
                    #expect(lag < 2, "subscriber \(index) delivered the slow event \(lag) s after its commit")
                    let sameOrder = delivered.map(\.id) == all.map(\.id)
                    #expect(sameOrder, "subscriber \(index) did not deliver the store's order")
                }
            }
        }
    }
}

extension PostgresTests.Ordering {
    @Test("the head position never runs ahead of what a later readAll returns, under concurrent writers")
    func headNeverAheadOfReads() async throws {
        try await withFreshStore { store in
            let finished = Locked(false)
            let writing = Task {
                defer { finished.value.withLock { $0 = true } }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for w in 0..<8 {
                        group.addTask {
                            for i in 0..<150 {
                                _ = try await store.append(
                                    [event("H", #"{"w":\#(w),"i":\#(i)}"#)], to: "h-\(i % 5)", expected: .any,
                                    commandID: nil)
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            var violations: [String] = []
            var checks = 0
            var cursor = LogPosition.start
            var seen: [UUID] = []
            while true {
                let wasFinished = finished.value.withLock { $0 }
                let head = try await store.headPosition()
                let page = try await store.readAll(after: cursor, limit: 10_000, filter: .all)
                seen += page.map(\.id)
                let last = page.last?.logPosition ?? cursor
                if head > last { violations.append("head \(head) > last read \(last) (cursor \(cursor))") }
                cursor = max(last, cursor)
                checks += 1
                if wasFinished { break }
            }
            try await writing.value
            #expect(violations.isEmpty, "\(violations.count) of \(checks) reads: \(violations.prefix(3))")
            let all = try await store.readAll(after: .start, limit: 10_000, filter: .all)
            #expect(seen == all.map(\.id))
        }
    }
}
