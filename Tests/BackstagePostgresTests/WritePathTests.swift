import Backstage
import Foundation
import PostgresNIO
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    @Suite("Write path: group commit, notifications, jsonb event data")
    struct WritePath {
        // Every group slot of the store waits on a stream whose lock a hooked transaction keeps,
        // so the appends started next queue and form one group when the gate opens. Notifications
        // are not spaced here: the blocker's, the slots' and the group's commits come within the
        // default 2 ms of each other and would share notifications, so the count would not show
        // one per transaction.
        @Test("appends waiting at the same moment share one transaction; a conflicting one is rejected alone")
        func groupWithOneConflict() async throws {
            try await withFreshStore(configure: { $0.notificationInterval = .zero }) { store in
                _ = try await store.append([event()], to: "g-bad", expected: .any, commandID: nil)
                let notifications = store.appendNotifications()
                _ = notifications
                #expect(try await eventually { store.notificationStatus.isListening })

                let gate = Gate()
                let blocker = await appendHeldOpen(store, [event("Blocker")], to: "g-block", until: gate)
                // Every group slot waits for the blocker's stream lock.
                let slots = (0..<PostgresEventStore.maxGroupsInFlight).map { i in
                    Task { try await store.append([event("Slot\(i)")], to: "g-block", expected: .any, commandID: nil) }
                }
                #expect(try await eventually { try await waitingLocks(store, "advisory") >= slots.count })
                // These queue: 63 new streams and one append with a wrong expected version.
                let count = 64
                let appends = (0..<count).map { i in
                    Task {
                        try await store.append(
                            [event("Grouped", #"{"i":\#(i)}"#), event("Grouped", #"{"i":\#(i),"second":true}"#)],
                            to: i == 17 ? "g-bad" : "g-\(i)", expected: i == 17 ? .exact(5) : .noStream,
                            commandID: UUID())
                    }
                }
                #expect(try await eventually { store.queuedAppends == count })
                let before = store.notificationStatus.notificationsReceived
                gate.open()
                _ = try await blocker.value
                for slot in slots { _ = try await slot.value }
                var transactions: Set<UInt64> = []
                for (i, task) in appends.enumerated() {
                    let outcome = await task.result
                    if i == 17 {
                        #expect(
                            throws: EventStoreError.wrongExpectedVersion(
                                stream: "g-bad", expected: .exact(5), actual: 1)
                        ) {
                            try outcome.get()
                        }
                    } else {
                        let result = try outcome.get()
                        #expect(result.firstVersion == 1 && result.lastVersion == 2 && !result.isDuplicate)
                        // Positions come from a sequence that concurrent transactions share.
                        #expect(result.lastPosition > result.firstPosition)
                        transactions.insert(result.transaction)
                    }
                }
                // One group: every accepted append in one transaction, the rejected one with them.
                #expect(transactions.count == 1)
                #expect(store.statistics.largestGroup == count)
                #expect(try await store.streamVersion("g-bad") == 1)
                for i in [0, 16, 18, 63] {
                    let events = try await store.readStream("g-\(i)", from: 1, direction: .forward, limit: 10)
                    #expect(events.map(\.streamVersion) == [1, 2])
                }
                // One notification per transaction: the blocker, the slots, the group, then a marker.
                _ = try await store.append([event("Marker")], to: "g-marker", expected: .any, commandID: nil)
                let expected = before + 1 + slots.count + 1 + 1
                #expect(try await eventually { store.notificationStatus.notificationsReceived >= expected })
                #expect(store.notificationStatus.notificationsReceived == expected)
            }
        }

        @Test("a transaction that stores nothing sends no notification; duplicates answer the original result")
        func noNotificationWithoutEvents() async throws {
            try await withFreshStore { store in
                _ = store.appendNotifications()
                #expect(try await eventually { store.notificationStatus.isListening })
                let command = UUID()
                let first = try await store.append([event()], to: "n-1", expected: .noStream, commandID: command)
                #expect(try await eventually { store.notificationStatus.notificationsReceived >= 1 })
                let base = store.notificationStatus.notificationsReceived
                await #expect(throws: EventStoreError.self) {
                    try await store.append([event()], to: "n-1", expected: .noStream, commandID: nil)
                }
                var again = try await store.append([event()], to: "n-1", expected: .noStream, commandID: command)
                #expect(again.isDuplicate)
                again.isDuplicate = false
                var original = first
                original.recordedAt = nil
                #expect(again == original)
                _ = try await store.append([event()], to: "n-2", expected: .any, commandID: nil)
                #expect(try await eventually { store.notificationStatus.notificationsReceived >= base + 1 })
                #expect(store.notificationStatus.notificationsReceived == base + 1)
            }
        }

        // Two appends of one command id to two streams lock different streams, so neither sees
        // the other's command row before it commits: the second insert of the id waits for the
        // first transaction and then fails on the key. A lone append (a group of one, in another
        // process here) retries and answers as the stored command says, as a member of a larger
        // group does, never with the key's error.
        @Test("one command id appended to two streams at the same moment: the later append is an idempotency conflict")
        func commandIDRaceAcrossStreams() async throws {
            try await withFreshStore { store in
                try await withPeer(of: store) { other in
                    let command = UUID()
                    let release = Gate()
                    let first = await appendHeldOpen(
                        store, [event("First")], to: "race-a", expected: .noStream, commandID: command, until: release)
                    let second = Task {
                        try await other.append([event("Second")], to: "race-b", expected: .noStream, commandID: command)
                    }
                    // The second append's insert waits for the first transaction.
                    #expect(try await eventually { try await waitingLocks(store, "transactionid") >= 1 })
                    release.open()
                    let stored = try await first.value
                    #expect(stored.stream == "race-a" && !stored.isDuplicate)
                    await #expect(throws: EventStoreError.idempotencyConflict(commandID: command, stream: "race-a")) {
                        try await second.value
                    }
                    #expect(try await store.streamVersion("race-b") == 0)
                }
            }
        }

        @Test("event data is jsonb: queryable in SQL; payloads jsonb cannot hold read back byte for byte")
        func jsonbData() async throws {
            try await withFreshStore { store in
                let spaced = #"{ "z": 1,  "a": [1, 2.50], "s": "é" }"#
                let opaque = Data([0, 1, 2, 0xFF, 0xFE])
                let nul = #"{"s":"a\u0000b"}"#
                let duplicateKeys = #"{"a":1,"a":2}"#
                let payloads = [Data(spaced.utf8), opaque, Data(nul.utf8), Data(duplicateKeys.utf8), Data()]
                let command = UUID()
                _ = try await store.append(
                    payloads.map { EventData(type: "J", data: $0) }, to: "j-1", expected: .noStream, commandID: command)
                let read = try await store.readStream("j-1", from: 1, direction: .forward, limit: 10)
                // The JSON value comes back in PostgreSQL's rendering...
                let value = try JSONSerialization.jsonObject(with: read[0].data) as? NSDictionary
                #expect(value == (try JSONSerialization.jsonObject(with: Data(spaced.utf8)) as? NSDictionary))
                #expect(read[0].data != Data(spaced.utf8))
                // ...and the others byte for byte.
                #expect(read.dropFirst().map(\.data) == Array(payloads.dropFirst()))
                let s = store.schema.rawValue
                let rows = try await store.client.query(
                    """
                    SELECT data->'a'->>1, data->>'s', data_bytes IS NULL FROM \(unescaped: s).events
                    WHERE stream = 'j-1' ORDER BY stream_version LIMIT 1
                    """)
                for try await (second, text, isJSON) in rows.decode((String, String, Bool).self) {
                    #expect(second == "2.50")
                    #expect(text == "é")
                    #expect(isJSON)
                }
                // Fingerprints are over the appended bytes: the same bytes are a duplicate, the
                // same JSON value spelled otherwise is another command.
                let again = try await store.append(
                    payloads.map { EventData(type: "J", data: $0) }, to: "j-1", expected: .noStream, commandID: command)
                #expect(again.isDuplicate)
                var respelled = payloads
                respelled[0] = Data(#"{"z":1,"a":[1,2.50],"s":"é"}"#.utf8)
                await #expect(throws: EventStoreError.idempotencyConflict(commandID: command, stream: "j-1")) {
                    try await store.append(
                        respelled.map { EventData(type: "J", data: $0) }, to: "j-1", expected: .noStream,
                        commandID: command)
                }
            }
        }

        // On its own pool the store's group writers keep their connections between groups. One
        // the server closes while it is kept (a restart, an operator's pg_terminate_backend) is
        // given back and replaced: postgres-nio never completes a query sent on a closed connection.
        @Test(
            "a group writer's kept connection that the server closed is replaced: the next appends succeed",
            .timeLimit(.minutes(1)))
        func keptConnectionReplaced() async throws {
            // Notifications a minute apart: the owed ones wait for the stop, so no pooled
            // connection sends one (and looks like a writer's) while the test terminates sessions.
            try await withFreshStore(configure: { $0.notificationInterval = .seconds(60) }) { store in
                for i in 0..<4 {
                    _ = try await store.append([event()], to: "kept-\(i)", expected: .noStream, commandID: nil)
                }
                let kept = try await writerSessions(store)
                #expect(!kept.isEmpty, "the writers gave their connections back")
                for pid in kept { _ = try await store.client.query("SELECT pg_terminate_backend(\(pid))") }
                #expect(try await eventually { try await writerSessions(store).allSatisfy { !kept.contains($0) } })
                for i in 4..<12 {
                    // The client may learn of the close only from this append's write (the server
                    // ends the session before its socket is seen closed): that append fails with
                    // the store's error, and is retried once; none waits forever.
                    let append = {
                        try await store.append([event()], to: "kept-\(i)", expected: .noStream, commandID: nil)
                    }
                    let result: AppendResult
                    do {
                        result = try await append()
                    } catch is PostgresStoreError {
                        result = try await append()
                    }
                    #expect(result.firstVersion == 1)
                }
                #expect(try await store.readAll(after: .start, limit: 100, filter: .all).count == 12)
            }
        }

        // A kept connection is leased, so the pool's keep-alive never checks it: one idle too
        // long goes back to the pool, and the next append leases one again.
        @Test("a group writer gives back a connection it kept idle too long, and leases one for the next append")
        func idleKeptConnectionGoesBack() async throws {
            try await withFreshStore(configure: { $0.keptConnectionIdleLimit = .milliseconds(200) }) { store in
                _ = try await store.append([event()], to: "idle-0", expected: .noStream, commandID: nil)
                #expect(store.writersOnConnections >= 1, "the writer did not keep its connection")
                #expect(try await eventually(timeout: .seconds(10)) { store.writersOnConnections == 0 })
                let again = try await store.append([event()], to: "idle-1", expected: .noStream, commandID: nil)
                #expect(again.firstVersion == 1)
                #expect(store.writersOnConnections >= 1)
            }
            // On a pool passed in, or one too small, a writer gives its connection back when the queue is empty.
            try await withFreshStore(configure: { $0.maximumConnections = 4 }) { store in
                _ = try await store.append([event()], to: "small-0", expected: .noStream, commandID: nil)
                #expect(try await eventually { store.writersOnConnections == 0 })
            }
        }

        @Test(
            "migration 3 turns bytea event data into jsonb: JSON reads back as the same value, the rest byte for byte")
        func migratesOldStore() async throws {
            try await withFreshStore(configure: { $0.migrate = false }) { store in
                try await loadEvolutionFixture(into: store)
                let s = store.schema.rawValue
                // Rows an old store may hold besides JSON: bytes, JSON jsonb refuses.
                _ = try await store.client.query(
                    """
                    INSERT INTO \(unescaped: s).streams (stream, version) VALUES ('odd-1', 2)
                    """)
                _ = try await store.client.query(
                    """
                    INSERT INTO \(unescaped: s).events (stream, stream_version, event_id, category, type, schema_version, data)
                    VALUES ('odd-1', 1, \(UUID()), 'odd', 'Bytes', 1, '\\x00ff01'::bytea),
                           ('odd-1', 2, \(UUID()), 'odd', 'Nul', 1, convert_to('{"s":"\\u0000"}', 'UTF8'))
                    """)
                var before: [Data] = []
                let old = try await store.client.query(
                    "SELECT data FROM \(unescaped: s).events ORDER BY position")
                for try await data in old.decode(Data.self) { before.append(data) }
                #expect(before.count == 6)

                #expect(try await store.migrate().first == 3)
                let after = try await store.readAll(after: .start, limit: 100, filter: .all)
                #expect(after.count == 6)
                for (old, new) in zip(before, after) {
                    if new.type == "Bytes" || new.type == "Nul" {
                        #expect(new.data == old, "\(new.type)")
                    } else {
                        let a = try JSONSerialization.jsonObject(with: old) as? NSDictionary
                        let b = try JSONSerialization.jsonObject(with: new.data) as? NSDictionary
                        #expect(a != nil && a == b, "\(new.type)")
                    }
                }
                let titles = try await store.client.query(
                    "SELECT data->>'title' FROM \(unescaped: s).events WHERE type = 'ShowScheduled'")
                for try await title in titles.decode(String.self) { #expect(title == "Hamlet") }
                // The events table still refuses changes.
                await #expect(throws: PSQLError.self) {
                    try await store.client.query("UPDATE \(unescaped: s).events SET type = 'X'")
                }
                // And appends work on the migrated store.
                let appended = try await store.append([event()], to: "odd-1", expected: .exact(2), commandID: nil)
                #expect(appended.firstVersion == 3)
            }
        }
    }
}

/// The server sessions of `store`'s group writers: idle, their last statement the store's
/// append function or its notification (which names the schema in a comment).
private func writerSessions(_ store: PostgresEventStore) async throws -> [Int32] {
    let schema = store.schema.rawValue
    let rows = try await store.client.query(
        """
        SELECT pid FROM pg_stat_activity
        WHERE pid <> pg_backend_pid() AND datname = current_database() AND state = 'idle'
          AND (query LIKE '%' || \(schema) || '.append_batch(%' OR query LIKE '%' || \(schema) || '.append_one(%'
               OR query LIKE '%pg_notify%-- ' || \(schema))
        """)
    var pids: [Int32] = []
    for try await pid in rows.decode(Int32.self) { pids.append(pid) }
    return pids
}
