import Backstage
import BackstageSQLite
import Foundation
import GRDB
import Testing

/// A temporary SQLite file, removed with its WAL files at the end of the test.
struct TemporaryDatabase: ~Copyable {
    let directory: URL
    var path: String { directory.appendingPathComponent("events.sqlite").path }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("backstage-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }
}

private func event(_ type: String = "Happened", _ body: String = "{}") -> EventData {
    EventData(type: type, data: Data(body.utf8))
}

// A counter with a capacity: the business rule two processes must not break.
private struct Counter: Aggregate, Codable {
    typealias Rejection = Full
    static let category = "counter"
    var value = 0
    mutating func apply(_ event: CounterEvent) {
        if case .incremented = event { value += 1 }
    }
}

private struct Incremented: Event {
    static let typeName = "Incremented"
}

private enum CounterEvent: EventFamily {
    case incremented(Incremented)
    static let members: [EventMember<CounterEvent>] = [.init(Incremented.self, CounterEvent.incremented)]
}

private struct Full: Error, Equatable {}

private struct Increment: Command {
    typealias Target = Counter
    var id: String
    var limit: Int
}

private func counterRouter() throws -> Router {
    var router = Router()
    try router.route(Increment.self, id: \.id) { (counter: Counter, command: Increment) throws(Full) in
        guard counter.value < command.limit else { throw Full() }
        return [.incremented(Incremented())]
    }
    return router
}

@Suite("SQLite event store")
struct SQLiteEventStoreTests {
    @Test("the database rejects UPDATE and DELETE on events")
    func immutable() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        _ = try await store.append([event()], to: "a-1", expected: .noStream, commandID: nil)
        #expect(throws: DatabaseError.self) {
            try store.database.write { try $0.execute(sql: "UPDATE backstage_events SET type = 'X'") }
        }
        #expect(throws: DatabaseError.self) {
            try store.database.write { try $0.execute(sql: "DELETE FROM backstage_events") }
        }
        let stored = try await store.readStream("a-1", from: 1, direction: .forward, limit: 10)
        #expect(stored.map(\.type) == ["Happened"])
    }

    @Test("concurrent appends are grouped into fewer transactions, each stored once")
    func groupCommit() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<400 {
                group.addTask {
                    _ = try await store.append([event()], to: "s-\(i)", expected: .noStream, commandID: nil)
                }
            }
            try await group.waitForAll()
        }
        let stats = store.statistics
        #expect(stats.appends == 400)
        #expect(stats.transactions < 400)
        #expect(stats.largestGroup > 1)
        let all = try await store.readAll(after: .start, limit: 1000, filter: .all)
        #expect(all.count == 400)
        #expect(Set(all.map(\.stream)).count == 400)
        #expect(all.map(\.position) == Array(1...400))
    }

    @Test("one conflicting append in a group rejects only itself")
    func conflictInGroup() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let outcomes = try await withThrowingTaskGroup(of: (String, Bool).self) { group in
            for i in 0..<50 {
                group.addTask {
                    do {
                        _ = try await store.append([event()], to: "shared-1", expected: .noStream, commandID: nil)
                        return ("shared", true)
                    } catch EventStoreError.wrongExpectedVersion(_, _, let actual) {
                        #expect(actual == 1)
                        return ("shared", false)
                    }
                }
                group.addTask {
                    _ = try await store.append([event()], to: "own-\(i)", expected: .noStream, commandID: nil)
                    return ("own", true)
                }
            }
            return try await group.reduce(into: [(String, Bool)]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 == ("shared", true) }.count == 1)
        #expect(outcomes.filter { $0 == ("own", true) }.count == 50)
        #expect(store.statistics.transactions < 100)
        #expect(try await store.streamVersion("shared-1") == 1)
        #expect(try await store.headPosition().position == 51)
    }

    @Test("an append whose event id is already stored fails alone; its group commits")
    func duplicateEventIDInGroup() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let reused = event()
        _ = try await store.append([reused], to: "first-1", expected: .any, commandID: nil)
        let results = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    _ = try await store.append([event(), reused], to: "second-1", expected: .any, commandID: nil)
                    return true
                } catch let error as EventStoreError {
                    #expect("\(error)".contains("already stored"))
                    return false
                } catch { return false }
            }
            for i in 0..<20 {
                group.addTask {
                    (try? await store.append([event()], to: "other-\(i)", expected: .any, commandID: nil)) != nil
                }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(results.filter { $0 }.count == 20)
        #expect(try await store.streamVersion("second-1") == 0)
        #expect(try await store.headPosition().position == 21)
    }

    @Test(
        "a new stream's append is checked by its first insert: a stream with events is a conflict with its version, a stored event id is invalid input, alone and in a group",
        arguments: [1, 16])
    func newStreamFirstInsertIsTheCheck(group: Int) async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let stored = try await store.append([event(), event()], to: "taken-1", expected: .any, commandID: nil)
        let reused = try await store.readStream("taken-1", from: 1, direction: .forward, limit: 1)[0].id
        let outcomes = await withTaskGroup(of: (String, String).self) { tasks in
            tasks.addTask {
                for expected in [ExpectedVersion.noStream, .exact(0)] {
                    do {
                        _ = try await store.append([event()], to: "taken-1", expected: expected, commandID: nil)
                        return ("taken", "appended")
                    } catch EventStoreError.wrongExpectedVersion(_, _, let actual) {
                        guard actual == stored.lastVersion else { return ("taken", "actual \(actual)") }
                    } catch { return ("taken", "\(error)") }
                }
                return ("taken", "conflict")
            }
            tasks.addTask {
                do {
                    let copy = EventData(id: reused, type: "Copy", data: Data("{}".utf8))
                    _ = try await store.append([copy, event()], to: "fresh-1", expected: .noStream, commandID: nil)
                    return ("reused", "appended")
                } catch EventStoreError.invalidInput(let message) {
                    return ("reused", message.contains("already stored") ? "invalid" : message)
                } catch { return ("reused", "\(error)") }
            }
            for i in 0..<(group - 1) {
                tasks.addTask {
                    do {
                        _ = try await store.append([event()], to: "new-\(i)", expected: .noStream, commandID: nil)
                        return ("new-\(i)", "appended")
                    } catch { return ("new-\(i)", "\(error)") }
                }
            }
            return await tasks.reduce(into: [String: String]()) { $0[$1.0] = $1.1 }
        }
        #expect(outcomes["taken"] == "conflict")
        #expect(outcomes["reused"] == "invalid")
        for i in 0..<(group - 1) { #expect(outcomes["new-\(i)"] == "appended") }
        #expect(try await store.streamVersion("taken-1") == 2)
        #expect(try await store.streamVersion("fresh-1") == 0)
        #expect(try await store.headPosition().position == Int64(2 + group - 1))
        // The stream that refused an append still takes the next one at its version.
        let next = try await store.append([event()], to: "taken-1", expected: .exact(2), commandID: nil)
        #expect(next.firstVersion == 3)
        try await store.close()
    }

    @Test(
        "events survive closing and reopening the file", arguments: [SQLiteEventStore.Durability.full, .normal, .off])
    func reopen(durability: SQLiteEventStore.Durability) async throws {
        let file = try TemporaryDatabase()
        var configuration = SQLiteEventStore.Configuration()
        configuration.durability = durability
        do {
            let store = try SQLiteEventStore(path: file.path, configuration: configuration)
            let expected =
                switch durability {
                case .full: 2
                case .normal: 1
                case .off: 0
                }
            let synchronous = try await store.database.read { try Int.fetchOne($0, sql: "PRAGMA synchronous") }
            #expect(synchronous == expected)
            _ = try await store.append([event("A"), event("B")], to: "s-1", expected: .noStream, commandID: UUID())
            try await store.close()
        }
        let reopened = try SQLiteEventStore(path: file.path, configuration: configuration)
        let events = try await reopened.readStream("s-1", from: 1, direction: .forward, limit: 10)
        #expect(events.map(\.type) == ["A", "B"])
        _ = try await reopened.append([event("C")], to: "s-1", expected: .exact(2), commandID: nil)
        #expect(try await reopened.headPosition().position == 3)
    }

    @Test("two applications on one SQLite file: conflicts are retried and no rule is broken")
    func twoApplicationsOneFile() async throws {
        let file = try TemporaryDatabase()
        var configuration = BackstageApp.Configuration()
        configuration.maxConflictRetries = 50
        let router = try counterRouter()
        // NORMAL durability: with a real sync per commit (FULL), SQLite's busy-wait backoff lets one
        // app run all its commands before the other gets the write lock, so no accepted command
        // retries; the rules still hold, but the retries are what this test is about.
        var storeConfiguration = SQLiteEventStore.Configuration()
        storeConfiguration.durability = .normal
        let apps = try (0..<2).map { _ in
            BackstageApp(
                store: try SQLiteEventStore(path: file.path, configuration: storeConfiguration), router: router,
                configuration: configuration)
        }
        let limit = 40
        // Both instances warm their caches first, so every later write of the other one is a conflict.
        for app in apps { _ = try await app.dispatch(Increment(id: "c", limit: limit)) }
        let outcomes = await withTaskGroup(of: (accepted: Bool, retries: Int).self) { group in
            for i in 0..<100 {
                let app = apps[i % 2]
                group.addTask {
                    do {
                        let result = try await app.dispatch(Increment(id: "c", limit: limit))
                        return (true, result.retries)
                    } catch {
                        #expect(error is Full)
                        return (false, 0)
                    }
                }
            }
            return await group.reduce(into: [(accepted: Bool, retries: Int)]()) { $0.append($1) }
        }
        #expect(outcomes.filter(\.accepted).count == limit - 2)
        // Conflicts are rarer than before 'catch up before deciding' (an instance reads the other's
        // appends first), so how many commands retried depends on timing; the rules must hold
        // whatever the count. Conflicts surfacing and retrying are pinned down in RuntimeTests.
        let loaded = try await apps[0].load(Counter.self, id: "c")
        #expect(loaded.state.value == limit)
        #expect(loaded.version == Int64(limit))
    }
}
