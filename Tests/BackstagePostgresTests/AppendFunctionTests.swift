import Backstage
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    @Suite("Append functions and notifications")
    struct AppendFunctions {
        @Test(
            "a migrated store calls migration 7's append function for groups and migration 9's for one append; a schema of migration 6 keeps append_group"
        )
        func choosesTheFunction() async throws {
            try await withFreshStore { store in
                #expect(store.appendFunction == PostgresMigrations.appendFunctionName)
                #expect(store.loneAppendFunction == PostgresMigrations.loneAppendFunctionName)
            }
            try await withFreshStore(configure: { $0.migrate = false }) { store in
                try await store.client.withConnection { conn in
                    _ = try await PostgresMigrations.migrate(store.schema, on: conn, logger: store.logger, through: 6)
                    try await store.findAppendFunction(on: conn)
                }
                #expect(store.appendFunction == PostgresMigrations.legacyAppendFunctionName)
                #expect(store.loneAppendFunction == nil)
                let first = try await store.append([event()], to: "old-1", expected: .noStream, commandID: nil)
                #expect(first.firstVersion == 1)
                #expect(try await store.migrate() == [7, 8, 9])
                #expect(store.appendFunction == PostgresMigrations.appendFunctionName)
                #expect(store.loneAppendFunction == PostgresMigrations.loneAppendFunctionName)
                let second = try await store.append([event()], to: "old-1", expected: .exact(1), commandID: nil)
                #expect(second.firstVersion == 2)
            }
        }

        // The append functions' plans are made once per session, from the statistics of that
        // moment: on new tables, PostgreSQL chose to read `streams` and `commands` whole at
        // every call until autovacuum analysed them (migration 8 forbids sequential scans).
        @Test(
            "each append function finds streams and commands by index on a new store",
            arguments: ["append_batch", "append_group", "append_one"])
        func appendsUseIndexes(function: String) async throws {
            try await withFreshStore { store in
                let s = store.schema.rawValue
                let scans = try await store.client.withConnection { conn in
                    // The session's counters not reported yet (this transaction's and earlier ones'), per table.
                    func counters() async throws -> [String: [Int]] {
                        let rows = try await conn.query(
                            """
                            SELECT relname, seq_scan::int, coalesce(idx_scan, 0)::int FROM pg_stat_xact_user_tables
                            WHERE schemaname = \(s) AND relname IN ('streams', 'commands')
                            """, logger: store.logger)
                        var counters: [String: [Int]] = [:]
                        for try await (table, sequential, index) in rows.decode((String, Int, Int).self) {
                            counters[table] = [sequential, index]
                        }
                        return counters
                    }
                    try await conn.query("BEGIN", logger: store.logger)
                    let before = try await counters()
                    for i in 0..<20 {
                        let events = """
                            ARRAY[gen_random_uuid()], ARRAY['E'], ARRAY[1], ARRAY['{}'::jsonb],
                            ARRAY[NULL::bytea], ARRAY[NULL::uuid], ARRAY[NULL::uuid], ARRAY[NULL::uuid],
                            ARRAY[NULL::jsonb], 'scan.appenders', 'scan.streams'
                            """
                        let call =
                            function == PostgresMigrations.loneAppendFunctionName
                            ? "\(function)('scan-\(i)', 'scan', 0, gen_random_uuid(), 'fp', \(events))"
                            : """
                            \(function)(ARRAY['scan-\(i)'], ARRAY['scan'], ARRAY[0::bigint],
                                ARRAY[gen_random_uuid()], ARRAY['fp'], ARRAY[1], ARRAY[1], ARRAY[1], \(events))
                            """
                        try await conn.query(
                            PostgresQuery(unsafeSQL: "SELECT * FROM \(s).\(call)"), logger: store.logger)
                    }
                    let after = try await counters()
                    try await conn.query("ROLLBACK", logger: store.logger)
                    var delta: [String: [Int]] = [:]
                    for (table, counts) in after {
                        delta[table] = zip(counts, before[table] ?? [0, 0]).map { $0 - $1 }
                    }
                    return delta
                }
                #expect(scans["streams"]?[0] == 0, "sequential scans of streams: \(scans)")
                #expect(scans["commands"]?[0] == 0, "sequential scans of commands: \(scans)")
                // Each call looked its stream and its command up.
                #expect((scans["streams"]?[1] ?? 0) >= 20 && (scans["commands"]?[1] ?? 0) >= 20, "\(scans)")
            }
        }

        // A process of the previous version calls `append_group` (migration 6) on the same
        // schema as a process calling `append_batch` (migration 7): both take the same locks in
        // the same order and write the same rows, so expected versions and command ids hold
        // across them.
        @Test("the old and the new append function side by side on one schema: versions, idempotency, order")
        func oldAndNewSideBySide() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store) { old in
                    old.useAppendFunction(PostgresMigrations.legacyAppendFunctionName)
                    #expect(store.appendFunction == PostgresMigrations.appendFunctionName)
                    let streams = (0..<6).map { "mixed-\($0)" }
                    let perCaller = 30
                    // 4 callers per store, each appending to the streams in turn with exact
                    // expected versions, retrying on a conflict.
                    let stored = try await withThrowingTaskGroup(of: Int.self) { group in
                        for (s, writer) in [store, old, store, old, store, old, store, old].enumerated() {
                            group.addTask {
                                var done = 0
                                for i in 0..<perCaller {
                                    let stream = streams[(s + i) % streams.count]
                                    while true {
                                        let last =
                                            try await writer.readStream(
                                                stream, from: Int64.max, direction: .backward, limit: 1
                                            ).first?.streamVersion ?? 0
                                        do {
                                            _ = try await writer.append(
                                                [event("E", #"{"w":\#(s)}"#), event("F")], to: stream,
                                                expected: last == 0 ? .noStream : .exact(last), commandID: UUID())
                                            done += 1
                                            break
                                        } catch EventStoreError.wrongExpectedVersion {
                                            continue
                                        }
                                    }
                                }
                                return done
                            }
                        }
                        return try await group.reduce(0, +)
                    }
                    #expect(stored == 8 * perCaller)
                    // Every stream's versions are 1...n without gaps, and the log holds every event once.
                    var total = 0
                    for stream in streams {
                        let events = try await store.readStream(stream, from: 1, direction: .forward, limit: 10_000)
                        #expect(events.map(\.streamVersion) == (0..<events.count).map { Int64($0 + 1) })
                        // Both events of one append are adjacent and in order.
                        for pair in stride(from: 0, to: events.count, by: 2) {
                            #expect(events[pair].type == "E" && events[pair + 1].type == "F")
                            #expect(events[pair].transaction == events[pair + 1].transaction)
                        }
                        total += events.count
                    }
                    #expect(total == 2 * 8 * perCaller)
                    var seen = Set<UUID>()
                    var position = LogPosition.start
                    while true {
                        let page = try await old.readAll(after: position, limit: 100, filter: .all)
                        guard let last = page.last else { break }
                        for e in page { #expect(seen.insert(e.id).inserted) }
                        position = last.logPosition
                    }
                    #expect(seen.count == total)

                    // Idempotency across the two functions, both ways.
                    for (first, second) in [(store, old), (old, store)] {
                        let command = UUID()
                        let events = [event("Paid", #"{"n":\#(Int.random(in: 0..<1_000_000))}"#)]
                        let original = try await first.append(
                            events, to: "pay-\(command)", expected: .noStream, commandID: command)
                        let again = try await second.append(
                            events, to: "pay-\(command)", expected: .noStream, commandID: command)
                        #expect(again.isDuplicate)
                        #expect(again.firstPosition == original.firstPosition)
                        #expect(again.transaction == original.transaction)
                        await #expect(
                            throws: EventStoreError.idempotencyConflict(commandID: command, stream: "pay-\(command)")
                        ) {
                            _ = try await second.append(
                                [event("Other")], to: "pay-\(command)", expected: .any, commandID: command)
                        }
                    }
                }
            }
        }

        // The sender coalesces: commits made while a notification is on its way share the next
        // one. A reader in another process that reads only when notified still gets every event
        // of every burst: the last commit of a burst is followed by a notification sent after it.
        @Test("notifications are coalesced, and the last commit of a burst still wakes a listener in another process")
        func coalescedNotifications() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store) { reader in
                    let hints = reader.appendNotifications()
                    #expect(try await eventually { reader.notificationStatus.isListening })
                    let bursts = 5
                    let perBurst = 48
                    let seen = Atomic<Int>(0)
                    // Reads on hints only (no polling): it ends when it has every event.
                    let follower = Task {
                        var position = LogPosition.start
                        var count = 0
                        for await _ in hints {
                            while true {
                                let page = try await reader.readAll(after: position, limit: 1_000, filter: .all)
                                guard let last = page.last else { break }
                                count += page.count
                                position = last.logPosition
                            }
                            seen.store(count, ordering: .relaxed)
                            if count == bursts * perBurst { return }
                        }
                    }
                    defer { follower.cancel() }
                    let sentBefore = store.notificationsSent
                    for burst in 0..<bursts {
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            for i in 0..<perBurst {
                                group.addTask {
                                    _ = try await store.append(
                                        [event()], to: "burst-\(burst)-\(i)", expected: .noStream, commandID: nil)
                                }
                            }
                            try await group.waitForAll()
                        }
                        // Woken by a notification of this burst's last commits.
                        let target = (burst + 1) * perBurst
                        #expect(
                            try await eventually(timeout: .seconds(30)) { seen.load(ordering: .relaxed) == target },
                            "burst \(burst): the reader has \(seen.load(ordering: .relaxed)) of \(target) events")
                    }
                    try await follower.value
                    let sent = store.notificationsSent - sentBefore
                    // One per commit that stored events at most, at least one per burst.
                    #expect(sent >= bursts && sent <= store.statistics.transactions)
                }
            }
        }

        // The notification interval is a minute here: the first commit is notified at once, the
        // next ones within the minute owe theirs, and stopping the store sends it.
        @Test("a commit made within the interval after a notification owes one, and closing the store sends it")
        func owedNotificationSentOnClose() async throws {
            try await withListeningReader { reader, before in
                try await withPeer(of: reader, configure: { $0.notificationInterval = .seconds(60) }) { writer in
                    _ = try await writer.append([event()], to: "owed-1", expected: .noStream, commandID: nil)
                    #expect(try await eventually { reader.notificationStatus.notificationsReceived == before + 1 })
                    #expect(!writer.notificationOwed)
                    _ = try await writer.append([event()], to: "owed-2", expected: .noStream, commandID: nil)
                    _ = try await writer.append([event()], to: "owed-3", expected: .noStream, commandID: nil)
                    #expect(try await eventually { writer.notificationOwed })
                    #expect(writer.notificationsSent == 1)
                }
                // Sent after both commits, when the writer stopped.
                #expect(try await eventually { reader.notificationStatus.notificationsReceived == before + 2 })
                let events = try await reader.readAll(after: .start, limit: 10, filter: .all)
                #expect(events.map(\.stream) == ["owed-1", "owed-2", "owed-3"])
            }
        }

        // The interval is a second: the second commit owes its notification, which goes out by
        // itself within two intervals while the store keeps running.
        @Test("an owed notification is sent by itself after twice the interval")
        func owedNotificationSentLater() async throws {
            try await withListeningReader { reader, before in
                try await withPeer(of: reader, configure: { $0.notificationInterval = .seconds(1) }) { writer in
                    _ = try await writer.append([event()], to: "later-1", expected: .noStream, commandID: nil)
                    _ = try await writer.append([event()], to: "later-2", expected: .noStream, commandID: nil)
                    let appended = ContinuousClock.now
                    #expect(try await eventually { writer.notificationOwed })
                    #expect(try await eventually { reader.notificationStatus.notificationsReceived == before + 2 })
                    #expect(!writer.notificationOwed)
                    #expect(writer.notificationsSent == 2)
                    #expect(ContinuousClock.now - appended < .seconds(5))
                }
            }
        }
    }
}

/// A store on a fresh schema that listens for notifications, and how many it had received when it
/// started listening.
private func withListeningReader(_ body: (PostgresEventStore, Int) async throws -> Void) async throws {
    try await withFreshStore { reader in
        _ = reader.appendNotifications()
        #expect(try await eventually { reader.notificationStatus.isListening })
        try await body(reader, reader.notificationStatus.notificationsReceived)
    }
}

@Suite("Notification spacing (no server needed)")
struct NotificationScheduleTests {
    @Test("a commit within the interval owes a notification; the next one after it, or the deferred sender, sends it")
    func schedule() {
        let t0 = ContinuousClock.now
        var schedule = NotificationSchedule()
        // Whether a commit `ms` milliseconds after t0 sends its notification at once.
        func commit(_ ms: Double) -> Bool {
            schedule.committed(at: t0 + .microseconds(Int(ms * 1_000)), interval: .milliseconds(2))
        }
        func takeDue(_ ms: Double) -> Bool { schedule.takeDue(at: t0 + .microseconds(Int(ms * 1_000))) }

        #expect(commit(0))
        #expect(!schedule.due)
        // Within the interval: owed, once for both commits.
        #expect(!commit(1))
        #expect(!commit(1.5))
        #expect(schedule.due)
        // The next commit after the interval sends one that covers the owed commits.
        #expect(commit(2))
        #expect(!schedule.due)
        #expect(!takeDue(3))
        // Owed again; the deferred sender takes it, and the interval counts from then.
        #expect(!commit(3))
        #expect(takeDue(6))
        #expect(!schedule.due)
        #expect(!takeDue(6))
        #expect(!commit(7))
        #expect(commit(8))
    }
}
