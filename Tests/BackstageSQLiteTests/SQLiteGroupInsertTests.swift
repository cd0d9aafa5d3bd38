import Backstage
import BackstageSQLite
import Foundation
import Testing

private func event(_ type: String = "Happened", fields: [String: String] = [:]) -> EventData {
    EventData(type: type, data: Data(#"{"n":1}"#.utf8), metadata: EventMetadata(fields: fields))
}

private typealias GroupAppend = (events: [EventData], stream: String, expected: ExpectedVersion, commandID: UUID?)

/// A group-commit transaction writes the events of its appends with multi-row INSERTs (up to
/// 64 rows each) after checking every append on its own; an insert that fails makes the group
/// run again one append at a time. `appendAsOneGroup` writes a given group, so that these tests
/// do not depend on concurrent appends meeting in one transaction.
@Suite("SQLite group commit: multi-row inserts")
struct SQLiteGroupInsertTests {
    @Test("every append of a group is stored at the versions and positions its result gives, across statements")
    func resultsMatchStoredRows() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        _ = try await store.append([event(), event()], to: "old-1", expected: .noStream, commandID: nil)
        let repeated = UUID()
        var group: [GroupAppend] = []
        // 40 appends of 1 to 5 events: 120 rows, more than one INSERT of 64 rows, appends split
        // between two statements.
        for i in 0..<40 {
            let events = (0...(i % 5)).map { _ in event(fields: i % 3 == 0 ? ["k": "\(i)"] : [:]) }
            group.append((events, "s-\(i)", i % 2 == 0 ? .noStream : .any, i % 4 == 0 ? UUID() : nil))
        }
        // The same stream again in the group (after the first append's rows), an existing stream,
        // and a command id twice: the second is a duplicate of the first.
        group.append(([event()], "s-1", .exact(2), nil))
        group.append(([event()], "old-1", .exact(2), nil))
        group.append(([event("Once")], "c-1", .noStream, repeated))
        group.append(([event("Once")], "c-1", .noStream, repeated))
        let (outcomes, redone) = try await store.appendAsOneGroup(group)
        #expect(!redone)
        let results = try outcomes.map { try $0.get() }
        #expect(results.last?.isDuplicate == true)
        #expect(results.last.map { AppendResult(copyOf: $0) } == AppendResult(copyOf: results[results.count - 2]))
        for (append, result) in zip(group, results).dropLast() {
            #expect(!result.isDuplicate)
            #expect(result.stream == append.stream)
            #expect(result.lastVersion - result.firstVersion + 1 == Int64(append.events.count))
            #expect(result.lastPosition - result.firstPosition + 1 == Int64(append.events.count))
            let stored = try await store.readStream(
                append.stream, from: result.firstVersion, direction: .forward, limit: append.events.count)
            #expect(stored.map(\.id) == append.events.map(\.id))
            #expect(stored.map(\.streamVersion) == Array(result.firstVersion...result.lastVersion))
            #expect(stored.map(\.position) == Array(result.firstPosition...result.lastPosition))
            #expect(stored.map(\.metadata.fields) == append.events.map(\.metadata.fields))
            if let commandID = append.commandID {
                let command = try await store.appendResult(forCommand: commandID)
                #expect(command.map { AppendResult(copyOf: $0) } == AppendResult(copyOf: result))
            }
        }
        #expect(results.first { $0.stream == "s-1" && $0.firstVersion == 3 } != nil)
        #expect(results.first { $0.stream == "old-1" }?.firstVersion == 3)
        let all = try await store.readAll(after: .start, limit: 1_000, filter: .all)
        #expect(all.map(\.position) == Array(1...Int64(all.count)))
        #expect(all.count == 2 + 120 + 3)
        try await store.close()
    }

    @Test(
        "a group where one append conflicts inside a multi-row insert: only that append is rejected, the others commit"
    )
    func conflictInsideMultiRowInsert() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        _ = try await store.append([event(), event()], to: "taken-1", expected: .noStream, commandID: nil)
        var group: [GroupAppend] = (0..<20).map { ([event()], "new-\($0)", .noStream, nil) }
        // A new-stream append to a stream with events: its first insert is its check, and it
        // fails inside the group's multi-row INSERT.
        group.insert(([event()], "taken-1", .noStream, nil), at: 7)
        let (outcomes, redone) = try await store.appendAsOneGroup(group)
        #expect(redone)
        for (i, outcome) in outcomes.enumerated() {
            if i == 7 {
                #expect(throws: EventStoreError.wrongExpectedVersion(stream: "taken-1", expected: .noStream, actual: 2))
                {
                    try outcome.get()
                }
            } else {
                #expect(try outcome.get().firstVersion == 1)
            }
        }
        #expect(try await store.streamVersion("taken-1") == 2)
        #expect(try await store.headPosition().position == 22)
        try await store.close()
    }

    @Test("appends of a group rejected by their checks (version, idempotency) fail alone, without a second pass")
    func checkFailuresInGroup() async throws {
        let file = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: file.path)
        let commandID = UUID()
        _ = try await store.append([event(), event()], to: "old-1", expected: .noStream, commandID: commandID)
        var group: [GroupAppend] = (0..<10).map { ([event()], "new-\($0)", .noStream, nil) }
        group.insert(([event()], "old-1", .exact(5), nil), at: 3)
        group.insert(([event("Other")], "other-1", .noStream, commandID), at: 6)
        let (outcomes, redone) = try await store.appendAsOneGroup(group)
        #expect(!redone)
        #expect(throws: EventStoreError.wrongExpectedVersion(stream: "old-1", expected: .exact(5), actual: 2)) {
            try outcomes[3].get()
        }
        #expect(throws: EventStoreError.idempotencyConflict(commandID: commandID, stream: "old-1")) {
            try outcomes[6].get()
        }
        #expect(outcomes.filter { (try? $0.get()) != nil }.count == 10)
        #expect(try await store.headPosition().position == 12)
        #expect(try await store.streamVersion("other-1") == 0)
        try await store.close()
    }
}

extension AppendResult {
    /// The result without `isDuplicate` and `recordedAt`, which a duplicate's result does not repeat.
    fileprivate init(copyOf result: AppendResult) {
        self.init(
            stream: result.stream, firstVersion: result.firstVersion, lastVersion: result.lastVersion,
            firstPosition: result.firstPosition, lastPosition: result.lastPosition)
    }
}
