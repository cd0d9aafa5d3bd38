import Backstage
import Foundation
import PostgresNIO
import Testing

@testable import BackstagePostgres

/// Every test that needs a server lives under this suite: they run one at a time, because some
/// (the ordering tests) load the machine and measure delivery delays.
@Suite("PostgreSQL", .serialized, .needsPostgres)
struct PostgresTests {}

@Suite("PostgreSQL settings (no server needed)")
struct PostgresSettingsTests {
    @Test("schema names are checked against the allowlist pattern")
    func schemaNames() throws {
        for good in ["backstage", "_x", "a1_b2", String(repeating: "a", count: 63)] {
            #expect(try PostgresSchemaName(good).rawValue == good)
        }
        for bad in [
            "", "1abc", "Backstage", "a-b", "a b", "a;drop table x", "\"x\"", "pg_catalog", "é",
            String(repeating: "a", count: 64),
        ] {
            #expect(throws: PostgresStoreError.invalidSchemaName(bad)) { try PostgresSchemaName(bad) }
        }
    }

    @Test("a postgres:// URL is parsed into connection settings")
    func urls() throws {
        let s = try PostgresConnectionSettings(url: "postgres://app:p%40ss@db.local:6543/shop?sslmode=disable")
        #expect(s.host == "db.local")
        #expect(s.port == 6543)
        #expect(s.username == "app")
        #expect(s.password == "p@ss")
        #expect(s.database == "shop")
        #expect(s.tls == .disable)

        let d = try PostgresConnectionSettings(url: "postgresql://u@127.0.0.1/db")
        #expect(d.port == 5432)
        #expect(d.password == nil)
        #expect(d.tls == .prefer)

        let socket = try PostgresConnectionSettings(url: "postgres://u@localhost:5433/db?host=/tmp/pg")
        #expect(socket.unixSocketFolder == "/tmp/pg")
        #expect(socket.host == nil)

        #expect(throws: PostgresStoreError.self) { try PostgresConnectionSettings(url: "mysql://u@h/db") }
        #expect(throws: PostgresStoreError.self) { try PostgresConnectionSettings(url: "postgres://h/db") }
        #expect(throws: PostgresStoreError.self) {
            try PostgresConnectionSettings(url: "postgres://u@h/db?sslmode=sometimes")
        }
    }

    @Test("an invalid schema name is rejected before anything connects")
    func invalidSchemaRejected() async throws {
        var configuration = PostgresEventStore.Configuration()
        configuration.schema = "x; DROP TABLE y"
        #expect(throws: PostgresStoreError.invalidSchemaName("x; DROP TABLE y")) {
            _ = try PostgresEventStore(url: "postgres://u@127.0.0.1:1/db", configuration: configuration)
        }
    }
}

extension PostgresTests {
    @Suite("PostgresEventStore")
    struct Store {
        @Test("appends and reads one stream forward and backward, in pages")
        func appendAndReadStream() async throws {
            try await withFreshStore { store in
                let first = try await store.append(
                    [event("A", #"{"i":1}"#), event("B", #"{"i":2}"#)], to: "order-1", expected: .noStream,
                    commandID: nil)
                #expect(first.firstVersion == 1)
                #expect(first.lastVersion == 2)
                #expect(first.lastPosition == first.firstPosition + 1)
                #expect(first.transaction > 0)
                let second = try await store.append(
                    [event("C", #"{"i":3}"#)], to: "order-1", expected: .exact(2), commandID: nil)
                #expect(second.firstVersion == 3)
                #expect(second.lastLogPosition > first.lastLogPosition)

                let forward = try await store.readStream("order-1", from: 1, direction: .forward, limit: 10)
                #expect(forward.map(\.type) == ["A", "B", "C"])
                #expect(forward.map(\.streamVersion) == [1, 2, 3])
                #expect(forward.allSatisfy { $0.stream == "order-1" && $0.category == "order" })
                let page = try await store.readStream("order-1", from: 2, direction: .forward, limit: 1)
                #expect(page.map(\.type) == ["B"])
                let backward = try await store.readStream("order-1", from: 3, direction: .backward, limit: 2)
                #expect(backward.map(\.streamVersion) == [3, 2])
                let beyond = try await store.readStream("order-1", from: 4, direction: .forward, limit: 10)
                #expect(beyond.isEmpty)
                #expect(try await store.streamVersion("order-1") == 3)
                #expect(try await store.streamVersion("order-2") == 0)
                #expect(try await store.readStream("order-2", from: 1, direction: .forward, limit: 10).isEmpty)
            }
        }

        @Test("the expected version is checked, and a conflict carries the actual version")
        func expectedVersions() async throws {
            try await withFreshStore { store in
                await #expect(
                    throws: EventStoreError.wrongExpectedVersion(stream: "s-1", expected: .streamExists, actual: 0)
                ) {
                    try await store.append([event()], to: "s-1", expected: .streamExists, commandID: nil)
                }
                await #expect(
                    throws: EventStoreError.wrongExpectedVersion(stream: "s-1", expected: .exact(3), actual: 0)
                ) {
                    try await store.append([event()], to: "s-1", expected: .exact(3), commandID: nil)
                }
                _ = try await store.append([event(), event()], to: "s-1", expected: .noStream, commandID: nil)
                await #expect(
                    throws: EventStoreError.wrongExpectedVersion(stream: "s-1", expected: .noStream, actual: 2)
                ) {
                    try await store.append([event()], to: "s-1", expected: .noStream, commandID: nil)
                }
                await #expect(
                    throws: EventStoreError.wrongExpectedVersion(stream: "s-1", expected: .exact(1), actual: 2)
                ) {
                    try await store.append([event()], to: "s-1", expected: .exact(1), commandID: nil)
                }
                _ = try await store.append([event()], to: "s-1", expected: .streamExists, commandID: nil)
                _ = try await store.append([event()], to: "s-1", expected: .any, commandID: nil)
                #expect(try await store.streamVersion("s-1") == 4)
                // Failed appends wrote nothing.
                #expect(try await store.readAll(after: .start, limit: 100, filter: .all).count == 4)
            }
        }

        @Test("a command id makes an append idempotent; reused with other events it is a conflict")
        func idempotency() async throws {
            try await withFreshStore { store in
                let command = UUID()
                let events = [event("Paid", #"{"amount":10}"#)]
                let first = try await store.append(events, to: "pay-1", expected: .noStream, commandID: command)
                #expect(!first.isDuplicate)
                // A retry carries fresh event ids and an expectation that no longer holds.
                let retry = try await store.append(
                    [event("Paid", #"{"amount":10}"#)], to: "pay-1", expected: .noStream, commandID: command)
                #expect(retry.isDuplicate)
                #expect(retry.firstPosition == first.firstPosition)
                #expect(retry.lastVersion == first.lastVersion)
                #expect(retry.transaction == first.transaction)
                #expect(try await store.streamVersion("pay-1") == 1)
                await #expect(throws: EventStoreError.idempotencyConflict(commandID: command, stream: "pay-1")) {
                    try await store.append(
                        [event("Paid", #"{"amount":11}"#)], to: "pay-1", expected: .any, commandID: command)
                }
                let stored = try await store.appendResult(forCommand: command)
                #expect(stored?.isDuplicate == true)
                #expect(stored?.lastPosition == first.lastPosition)
                #expect(try await store.appendResult(forCommand: UUID()) == nil)
            }
        }

        @Test("concurrent retries of one command on one stream write once")
        func concurrentIdempotency() async throws {
            try await withFreshStore { store in
                let command = UUID()
                let results = try await withThrowingTaskGroup(of: AppendResult.self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            try await store.append(
                                [event("Once")], to: "once-1", expected: .any, commandID: command)
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(results.filter { !$0.isDuplicate }.count == 1)
                #expect(Set(results.map(\.firstPosition)).count == 1)
                #expect(try await store.streamVersion("once-1") == 1)
            }
        }

        @Test("concurrent writers with exact expected versions: exactly one wins each version")
        func concurrentExpectedVersion() async throws {
            try await withFreshStore { store in
                let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for _ in 0..<10 {
                        group.addTask {
                            do {
                                _ = try await store.append([event()], to: "race-1", expected: .noStream, commandID: nil)
                                return true
                            } catch EventStoreError.wrongExpectedVersion(_, _, let actual) {
                                #expect(actual == 1)
                                return false
                            }
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(outcomes.filter { $0 }.count == 1)
                #expect(try await store.streamVersion("race-1") == 1)
            }
        }

        @Test("the global log is read in pages after a position, filtered in the database")
        func readAllAndFilters() async throws {
            try await withFreshStore { store in
                _ = try await store.append(
                    [event("Opened"), event("Deposited")], to: "account-1", expected: .any, commandID: nil)
                _ = try await store.append([event("Placed")], to: "order-1", expected: .any, commandID: nil)
                _ = try await store.append([event("Deposited")], to: "account-2", expected: .any, commandID: nil)
                _ = try await store.append([event("Shipped")], to: "order", expected: .any, commandID: nil)

                let all = try await store.readAll(after: .start, limit: 100, filter: .all)
                #expect(all.map(\.type) == ["Opened", "Deposited", "Placed", "Deposited", "Shipped"])
                #expect(zip(all, all.dropFirst()).allSatisfy { $0.logPosition < $1.logPosition })
                var paged: [RecordedEvent] = []
                var position = LogPosition.start
                while true {
                    let page = try await store.readAll(after: position, limit: 2, filter: .all)
                    if page.isEmpty { break }
                    paged += page
                    position = page.last!.logPosition
                }
                #expect(paged.map(\.id) == all.map(\.id))
                #expect(try await store.headPosition() == all.last!.logPosition)

                let deposits = try await store.readAll(
                    after: .start, limit: 100, filter: EventFilter(types: ["Deposited"]))
                #expect(deposits.map(\.stream) == ["account-1", "account-2"])
                let orders = try await store.readAll(
                    after: .start, limit: 100, filter: EventFilter(categories: ["order"]))
                #expect(orders.map(\.type) == ["Placed", "Shipped"])
                let both = try await store.readAll(
                    after: .start, limit: 100, filter: EventFilter(types: ["Deposited"], categories: ["account"]))
                #expect(both.count == 2)
                let none = try await store.readAll(after: .start, limit: 100, filter: EventFilter(types: []))
                #expect(none.isEmpty)
                let afterFirst = try await store.readAll(after: all[1].logPosition, limit: 100, filter: .all)
                #expect(afterFirst.map(\.id) == all.dropFirst(2).map(\.id))
            }
        }

        @Test("an empty store has its head at the start")
        func emptyHead() async throws {
            try await withFreshStore { store in
                let head = try await store.headPosition()
                #expect(head == .start)
                #expect(try await store.readAll(after: .start, limit: 10, filter: .all).isEmpty)
            }
        }

        @Test("data bytes, metadata and ids are stored exactly")
        func exactData() async throws {
            try await withFreshStore { store in
                // Not canonical JSON: jsonb would reorder keys and drop the spaces.
                let json = #"{ "z": 1,  "a": [1, 2.50], "s": "é\u0000" }"#
                let metadata = EventMetadata(
                    commandID: UUID(), causationID: UUID(), correlationID: UUID(),
                    fields: ["user": "ada", "tenant": "t-1"])
                let data = EventData(type: "Exact", schemaVersion: 3, data: Data(json.utf8), metadata: metadata)
                _ = try await store.append([data], to: "exact-1", expected: .any, commandID: nil)
                let read = try #require(
                    try await store.readStream("exact-1", from: 1, direction: .forward, limit: 1).first)
                #expect(read.data == Data(json.utf8))
                #expect(read.id == data.id)
                #expect(read.schemaVersion == 3)
                #expect(read.metadata == metadata)
                #expect(abs(read.recordedAt.timeIntervalSinceNow) < 60)
                let plain = try await store.append([event()], to: "exact-2", expected: .any, commandID: nil)
                let readPlain = try await store.readAll(after: .start, limit: 10, filter: .all)
                #expect(readPlain.last?.position == plain.lastPosition)
                #expect(readPlain.last?.metadata == EventMetadata())
            }
        }

        @Test("bad input is rejected before anything is written")
        func invalidInput() async throws {
            try await withFreshStore { store in
                await #expect(throws: EventStoreError.self) {
                    try await store.append([event()], to: "", expected: .any, commandID: nil)
                }
                await #expect(throws: EventStoreError.self) {
                    try await store.append([], to: "s-1", expected: .any, commandID: nil)
                }
                await #expect(throws: EventStoreError.self) {
                    try await store.readAll(after: .start, limit: 0, filter: .all)
                }
                let e = event()
                _ = try await store.append([e], to: "s-1", expected: .any, commandID: nil)
                await #expect(throws: EventStoreError.invalidInput("an event id of this append is already stored")) {
                    try await store.append([e], to: "s-2", expected: .any, commandID: nil)
                }
                #expect(try await store.streamVersion("s-2") == 0)
                #expect(try await store.readAll(after: .start, limit: 10, filter: .all).count == 1)
            }
        }

        @Test("the database rejects UPDATE, DELETE and TRUNCATE on events")
        func immutableEvents() async throws {
            try await withFreshStore { store in
                _ = try await store.append([event()], to: "imm-1", expected: .any, commandID: nil)
                let s = store.schema.rawValue
                let statements: [PostgresQuery] = [
                    "UPDATE \(unescaped: s).events SET type = 'Changed'",
                    "DELETE FROM \(unescaped: s).events",
                    "TRUNCATE \(unescaped: s).events",
                ]
                for statement in statements {
                    do {
                        try await store.client.query(statement)
                        Issue.record("\(statement.sql) was accepted")
                    } catch let error as PSQLError {
                        // TRUNCATE is refused before the trigger runs while a foreign key points at events.
                        let message = error.serverInfo?[.message] ?? ""
                        #expect(
                            message.contains("events are immutable") || message.contains("foreign key"),
                            "\(statement.sql): \(message)")
                    }
                }
                let events = try await store.readAll(after: .start, limit: 10, filter: .all)
                #expect(events.map(\.type) == ["Tested"])
            }
        }

        @Test("snapshots: the newest of a schema version is kept; another version is ignored")
        func snapshots() async throws {
            try await withFreshStore { store in
                #expect(try await store.loadSnapshot("acc-1", schemaVersion: 1) == nil)
                try await store.saveSnapshot(
                    Snapshot(stream: "acc-1", version: 5, schemaVersion: 1, data: Data("five".utf8)))
                try await store.saveSnapshot(
                    Snapshot(stream: "acc-1", version: 3, schemaVersion: 1, data: Data("three".utf8)))
                #expect(try await store.loadSnapshot("acc-1", schemaVersion: 1)?.version == 5)
                #expect(try await store.loadSnapshot("acc-1", schemaVersion: 2) == nil)
                try await store.saveSnapshot(
                    Snapshot(stream: "acc-1", version: 2, schemaVersion: 2, data: Data("v2".utf8)))
                let v2 = try await store.loadSnapshot("acc-1", schemaVersion: 2)
                #expect(v2?.data == Data("v2".utf8))
                #expect(v2?.version == 2)
                #expect(try await store.loadSnapshot("acc-1", schemaVersion: 1) == nil)
            }
        }

        @Test("migrations run once, also when several processes open the schema at once")
        func migrations() async throws {
            try await withFreshStore(configure: { $0.migrate = false }) { store in
                let opened = try await withThrowingTaskGroup(of: [Int].self) { group in
                    for _ in 0..<4 {
                        group.addTask {
                            try await withPeer(of: store, configure: { $0.migrate = false }) { peer in
                                try await peer.migrate()
                            }
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                let latest = PostgresMigrations.all.map(\.version)
                #expect(opened.filter { !$0.isEmpty } == [latest])
                #expect(try await store.migrate() == [])
                let rows = try await store.client.query(
                    "SELECT count(*) FROM \(unescaped: store.schema.rawValue).migrations")
                for try await count in rows.decode(Int64.self) { #expect(count == Int64(latest.count)) }
            }
        }
    }
}
