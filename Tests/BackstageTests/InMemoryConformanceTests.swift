import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import Synchronization
import Testing

@Suite("InMemoryEventStore conformance")
struct InMemoryConformanceTests {
    @Test(arguments: StoreConformance.checks)
    func conformance(_ check: ConformanceCheck) async throws {
        try await check.run { InMemoryEventStore() }
    }

    @Test("small limits are read from the store")
    func smallLimits() async throws {
        let limits = StoreLimits(
            maxPayloadBytes: 64, maxEventsPerAppend: 5, maxStreamIDBytes: 24, maxPageSize: 7, maxTypeNameBytes: 20)
        for check in StoreConformance.checks where check.name.hasPrefix("rejects") || check.name.hasPrefix("accepts") {
            try await check.run(on: InMemoryEventStore(limits: limits))
        }
    }

    @Test("an event id already stored is rejected, whatever order the ids arrived in")
    func eventIDsInAnyOrder() async throws {
        let store = InMemoryEventStore()
        let ids = (0..<40).map { _ in UUIDv7.next() }
        // Ascending, descending, then interleaved: the index keeps ascending ids apart from the others.
        let order =
            Array(ids[0..<10]) + ids[10..<20].reversed()
            + (0..<20).map { ids[20 + ($0 % 2 == 0 ? $0 / 2 : 19 - $0 / 2)] }
        for (n, id) in order.enumerated() {
            _ = try await store.append(
                [EventData(id: id, type: "T", data: Data("{}".utf8))], to: "s-\(n)", expected: .noStream, commandID: nil
            )
        }
        for (n, id) in ids.enumerated() {
            await #expect(throws: EventStoreError.invalidInput("event id \(id) is already stored")) {
                try await store.append(
                    [EventData(type: "T", data: Data("{}".utf8)), EventData(id: id, type: "T", data: Data("{}".utf8))],
                    to: "again-\(n)", expected: .any, commandID: nil)
            }
            await #expect(throws: EventStoreError.invalidInput("event id \(id) is already stored")) {
                try await store.append(
                    [EventData(id: id, type: "T", data: Data("{}".utf8))], to: "again-\(n)", expected: .any,
                    commandID: nil)
            }
        }
        // Rejected appends wrote nothing; an id below every stored one, and one above, are still new.
        #expect(try await store.headPosition().position == 40)
        let below = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1))
        _ = try await store.append(
            [EventData(id: below, type: "T", data: Data("{}".utf8)), EventData(type: "T", data: Data("{}".utf8))],
            to: "later", expected: .noStream, commandID: nil)
        #expect(try await store.headPosition().position == 42)
    }

    @Test("check names are unique")
    func uniqueNames() {
        let names = StoreConformance.checks.map(\.name)
        #expect(Set(names).count == names.count)
        #expect(names.count >= 30)
    }
}

// MARK: The suite catches broken stores

/// A store that breaks one rule of the contract, and the check that must notice.
struct Mutant: Sendable, CustomStringConvertible {
    var description: String
    var check: String
    var make: @Sendable () -> any EventStore
}

/// Forwards to an in-memory store, with one behaviour replaced.
final class BrokenStore: EventStore {
    let inner = InMemoryEventStore()
    let append:
        (@Sendable (InMemoryEventStore, [EventData], String, ExpectedVersion, UUID?) async throws -> AppendResult)?
    let readStream: (@Sendable (InMemoryEventStore, String, Int64, ReadDirection, Int) async throws -> [RecordedEvent])?
    let readAll: (@Sendable (InMemoryEventStore, LogPosition, Int, EventFilter) async throws -> [RecordedEvent])?
    let saveSnapshot: (@Sendable (InMemoryEventStore, Snapshot) async throws -> Void)?
    let appendResult: (@Sendable (UUID) -> AppendResult?)?
    let loadSnapshot: (@Sendable (String, Int) -> Snapshot?)?

    init(
        append: (
            @Sendable (InMemoryEventStore, [EventData], String, ExpectedVersion, UUID?) async throws -> AppendResult
        )? = nil,
        readStream: (
            @Sendable (InMemoryEventStore, String, Int64, ReadDirection, Int) async throws -> [RecordedEvent]
        )? = nil,
        readAll: (@Sendable (InMemoryEventStore, LogPosition, Int, EventFilter) async throws -> [RecordedEvent])? = nil,
        saveSnapshot: (@Sendable (InMemoryEventStore, Snapshot) async throws -> Void)? = nil,
        appendResult: (@Sendable (UUID) -> AppendResult?)? = nil,
        loadSnapshot: (@Sendable (String, Int) -> Snapshot?)? = nil
    ) {
        self.loadSnapshot = loadSnapshot
        self.append = append
        self.readStream = readStream
        self.readAll = readAll
        self.saveSnapshot = saveSnapshot
        self.appendResult = appendResult
    }

    var limits: StoreLimits { inner.limits }
    func append(_ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?) async throws
        -> AppendResult
    {
        if let append { return try await append(inner, events, stream, expected, commandID) }
        return try await inner.append(events, to: stream, expected: expected, commandID: commandID)
    }
    func readStream(_ stream: String, from version: Int64, direction: ReadDirection, limit: Int) async throws
        -> [RecordedEvent]
    {
        if let readStream { return try await readStream(inner, stream, version, direction, limit) }
        return try await inner.readStream(stream, from: version, direction: direction, limit: limit)
    }
    func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws -> [RecordedEvent] {
        if let readAll { return try await readAll(inner, position, limit, filter) }
        return try await inner.readAll(after: position, limit: limit, filter: filter)
    }
    func streamVersion(_ stream: String) async throws -> Int64 { try await inner.streamVersion(stream) }
    func headPosition() async throws -> LogPosition { try await inner.headPosition() }
    func appendResult(forCommand commandID: UUID) async throws -> AppendResult? {
        if let appendResult { return appendResult(commandID) }
        return try await inner.appendResult(forCommand: commandID)
    }
    func saveSnapshot(_ snapshot: Snapshot) async throws {
        if let saveSnapshot { return try await saveSnapshot(inner, snapshot) }
        try await inner.saveSnapshot(snapshot)
    }
    func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        if let loadSnapshot { return loadSnapshot(stream, schemaVersion) }
        return try await inner.loadSnapshot(stream, schemaVersion: schemaVersion)
    }
    func appendNotifications() -> AsyncStream<Void> { inner.appendNotifications() }
}

let mutants: [Mutant] = [
    Mutant(description: "ignores the expected version", check: "expected version exact") {
        BrokenStore(append: { s, e, stream, _, id in try await s.append(e, to: stream, expected: .any, commandID: id) })
    },
    Mutant(description: "reports conflicts without the actual version", check: "expected version noStream") {
        BrokenStore(append: { s, e, stream, expected, id in
            do {
                return try await s.append(e, to: stream, expected: expected, commandID: id)
            } catch EventStoreError
                .wrongExpectedVersion(let st, let ex, _)
            {
                throw EventStoreError.wrongExpectedVersion(stream: st, expected: ex, actual: -1)
            }
        })
    },
    Mutant(description: "forgets command ids", check: "idempotent append returns the original result") {
        BrokenStore(
            append: { s, e, stream, expected, _ in try await s.append(e, to: stream, expected: expected, commandID: nil)
            },
            appendResult: { _ in nil })
    },
    Mutant(
        description: "checks the version, then appends in a second step",
        check: "concurrent exact appends: one winner per version"
    ) {
        BrokenStore(append: { s, e, stream, expected, id in
            let actual = try await s.streamVersion(stream)
            guard expected.accepts(actual) else {
                throw EventStoreError.wrongExpectedVersion(stream: stream, expected: expected, actual: actual)
            }
            try await Task.sleep(for: .milliseconds(5))  // the gap between check and write
            return try await s.append(e, to: stream, expected: .any, commandID: id)
        })
    },
    Mutant(
        description: "looks the command id up, then appends in a second step",
        check: "concurrent appends with the same command id store the events once"
    ) {
        BrokenStore(append: { s, e, stream, expected, id in
            if let id, let prior = try await s.appendResult(forCommand: id) { return prior }
            try await Task.sleep(for: .milliseconds(5))  // the gap between lookup and write
            return try await s.append(e, to: stream, expected: expected, commandID: nil)
        })
    },
    Mutant(
        description: "reports an already stored event id as a conflict",
        check: "concurrent appends: a bad append rejects only itself"
    ) {
        BrokenStore(append: { s, e, stream, expected, id in
            do { return try await s.append(e, to: stream, expected: expected, commandID: id) } catch EventStoreError
                .invalidInput
            {
                throw EventStoreError.wrongExpectedVersion(stream: stream, expected: expected, actual: 0)
            }
        })
    },
    Mutant(description: "reads backward as forward", check: "readStream forward and backward in pages") {
        BrokenStore(readStream: { s, stream, from, _, limit in
            try await s.readStream(stream, from: from, direction: .forward, limit: limit)
        })
    },
    Mutant(description: "ignores the page size of stream reads", check: "readStream forward and backward in pages") {
        BrokenStore(readStream: { s, stream, from, direction, _ in
            try await s.readStream(stream, from: from, direction: direction, limit: s.limits.maxPageSize)
        })
    },
    Mutant(description: "filters after taking the page", check: "readAll filters by type and category") {
        BrokenStore(readAll: { s, position, limit, filter in
            try await s.readAll(after: position, limit: limit, filter: .all).filter {
                filter.matches(type: $0.type, stream: $0.stream)
            }
        })
    },
    Mutant(description: "filters categories by prefix", check: "readAll filters by type and category") {
        BrokenStore(readAll: { s, position, limit, filter in
            try await s.readAll(after: position, limit: s.limits.maxPageSize, filter: EventFilter(types: filter.types))
                .filter { e in filter.categories.map { $0.contains { e.stream.hasPrefix($0) } } ?? true }
                .prefix(limit).map { $0 }
        })
    },
    Mutant(description: "re-delivers the event at the checkpoint", check: "readAll in pages from any position") {
        BrokenStore(readAll: { s, position, limit, filter in
            let from = LogPosition(transaction: position.transaction, position: max(0, position.position - 1))
            return try await s.readAll(after: from, limit: limit, filter: filter)
        })
    },
    Mutant(description: "lets an older snapshot replace a newer one", check: "snapshots") {
        let latest = Locked<[String: Snapshot]>([:])
        return BrokenStore(
            saveSnapshot: { _, snapshot in latest.value.withLock { $0[snapshot.stream] = snapshot } },
            loadSnapshot: { stream, schemaVersion in
                latest.value.withLock { $0[stream].flatMap { $0.schemaVersion == schemaVersion ? $0 : nil } }
            })
    },
    Mutant(description: "accepts page size 0", check: "rejects readStream with page size 0") {
        BrokenStore(readStream: { s, stream, from, direction, limit in
            limit == 0 ? [] : try await s.readStream(stream, from: from, direction: direction, limit: limit)
        })
    },
    Mutant(
        description: "accepts stream ids whose characters fit the byte limit",
        check: "rejects a stream id over the byte limit in multi-byte characters"
    ) {
        BrokenStore(append: { s, e, stream, expected, id in
            // Shortens multi-byte ids that fit in characters, as if the limit counted characters.
            let fitted =
                stream.count <= s.limits.maxStreamIDBytes
                ? String(stream.prefix(s.limits.maxStreamIDBytes / 2)) : stream
            return try await s.append(e, to: fitted, expected: expected, commandID: id)
        })
    },
]

@Suite("The conformance suite catches broken stores")
struct ConformanceMutationTests {
    @Test(arguments: mutants)
    func catches(_ mutant: Mutant) async throws {
        let check = try #require(StoreConformance.checks.first { $0.name == mutant.check })
        try await check.run { InMemoryEventStore() }
        let error = await #expect(throws: ConformanceFailure.self) { try await check.run(mutant.make) }
        #expect(error?.check == mutant.check)
        #expect(error?.message.isEmpty == false)
    }

    @Test("a failure names the check, the expectation and where it is written")
    func failureMessage() async throws {
        let check = try #require(StoreConformance.checks.first { $0.name == "expected version exact" })
        let error = await #expect(throws: ConformanceFailure.self) {
            try await check.run {
                BrokenStore(append: { s, e, stream, _, id in
                    try await s.append(e, to: stream, expected: .any, commandID: id)
                })
            }
        }
        let text = error.map { "\($0)" } ?? ""
        #expect(text.contains("conformance check 'expected version exact' failed"))
        #expect(text.contains("expected an EventStoreError"))
        #expect(text.contains("StoreConformance.swift:"))
    }

    @Test("failures(_:) lists nothing for a conforming store")
    func failuresOfConformingStore() async {
        let failures = await StoreConformance.failures { InMemoryEventStore() }
        #expect(failures.isEmpty, "\(failures)")
    }
}
