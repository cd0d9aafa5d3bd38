import Backstage
import Foundation
import Synchronization

/// A store broke the event store contract in a conformance check.
///
/// The message says what was expected and what the store did instead.
public struct ConformanceFailure: Error, Sendable, CustomStringConvertible {
    /// The name of the check that failed.
    public var check: String
    /// What went wrong: the expected and the actual behaviour.
    public var message: String
    /// Where in the suite the expectation is written (`file:line`).
    public var location: String

    /// Creates a failure.
    package init(check: String = "", message: String, location: String = "") {
        self.check = check
        self.message = message
        self.location = location
    }

    /// `conformance check '<name>' failed: <message> (<location>)`.
    public var description: String {
        let name = check.isEmpty ? "conformance check" : "conformance check '\(check)'"
        let place = location.isEmpty ? "" : " (\(location))"
        return "\(name) failed: \(message)\(place)"
    }
}

/// One named check of the event store contract.
///
/// Run it against a backend with ``run(_:)``, passing a factory that returns a fresh store.
/// The name is its `description`, so test runners show it as the test argument:
///
/// ```swift
/// @Test(arguments: StoreConformance.checks)
/// func conformance(_ check: ConformanceCheck) async throws {
///     try await check.run { InMemoryEventStore() }
/// }
/// ```
public struct ConformanceCheck: Sendable, CustomStringConvertible {
    /// Makes the store a check runs against; each call should return a fresh, empty store.
    public typealias StoreFactory = @Sendable () async throws -> any EventStore

    /// A short name, unique within ``StoreConformance/checks``.
    public let name: String
    let body: @Sendable (any EventStore) async throws -> Void

    /// Creates a check; `body` throws a ``ConformanceFailure`` when the store misbehaves.
    package init(_ name: String, _ body: @escaping @Sendable (any EventStore) async throws -> Void) {
        self.name = name
        self.body = body
    }

    /// Runs the check against a store made by `makeStore`.
    ///
    /// - Throws: ``ConformanceFailure`` naming the check; an error the store threw where none was
    ///   expected is reported as a failure too, with the error in the message.
    public func run(_ makeStore: StoreFactory) async throws {
        try await run(on: try await makeStore())
    }

    /// Runs the check against `store`, which the caller made (fresh and empty, ideally) and
    /// closes afterwards: for stores that need async cleanup, such as a schema to drop.
    ///
    /// ```swift
    /// try await withFreshStore { store in try await check.run(on: store) }
    /// ```
    ///
    /// - Throws: ``ConformanceFailure`` naming the check, as ``run(_:)``.
    public func run(on store: any EventStore) async throws {
        do {
            try await body(store)
        } catch var failure as ConformanceFailure {
            failure.check = name
            throw failure
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw ConformanceFailure(
                check: name, message: "unexpected error \(type(of: error)): \(error)")
        }
    }

    /// The check's name.
    public var description: String { name }
}

/// The event store contract as executable checks, run against every backend (in memory, SQLite,
/// PostgreSQL) and available for custom stores.
///
/// The checks cover the "Store semantics" of the design: round trip of every field, expected
/// versions and typed conflicts, idempotent appends by command id, paged stream and log reads
/// with filters, snapshots, notifications, input limits (read from the store's own
/// `EventStore/limits`) and the ordering guarantees under concurrent writers.
///
/// Checks only read what they wrote themselves (unique stream ids, categories and type names,
/// positions relative to the head when the check started), so a store that is not empty still
/// works; nothing else should write to it while a check runs.
public enum StoreConformance {
    /// Every check, in a stable order.
    public static var checks: [ConformanceCheck] {
        basicChecks + expectedVersionChecks + idempotencyChecks + readChecks + snapshotChecks
            + invalidInputChecks + concurrencyChecks
    }

    /// Runs every check against stores made by `makeStore` and returns the failures (empty when
    /// the store conforms). Handy outside a test framework.
    public static func failures(_ makeStore: ConformanceCheck.StoreFactory) async -> [any Error] {
        var failures: [any Error] = []
        for check in checks {
            do { try await check.run(makeStore) } catch { failures.append(error) }
        }
        return failures
    }
}

// MARK: - Expectations

private func failure(_ message: String, _ fileID: String, _ line: Int) -> ConformanceFailure {
    ConformanceFailure(message: message, location: "\(fileID):\(line)")
}

private func expect(
    _ condition: Bool, _ message: @autoclosure () -> String, fileID: String = #fileID, line: Int = #line
) throws {
    if !condition { throw failure(message(), fileID, line) }
}

private func expectEqual<T: Equatable>(
    _ actual: T, _ expected: T, _ what: String, fileID: String = #fileID, line: Int = #line
) throws {
    if actual != expected {
        throw failure("\(what): expected \(expected), actual \(actual)", fileID, line)
    }
}

/// Runs `operation`, which must throw an `EventStoreError`; returns it.
private func expectStoreError<T>(
    _ what: String, fileID: String = #fileID, line: Int = #line, _ operation: () async throws -> T
) async throws -> EventStoreError {
    let value: T
    do {
        value = try await operation()
    } catch let error as EventStoreError {
        return error
    } catch {
        throw failure("\(what): expected an EventStoreError, got \(type(of: error)): \(error)", fileID, line)
    }
    throw failure("\(what): expected an EventStoreError, but it succeeded with \(value)", fileID, line)
}

private func expectInvalidInput<T>(
    _ what: String, fileID: String = #fileID, line: Int = #line, _ operation: () async throws -> T
) async throws {
    let error = try await expectStoreError(what, fileID: fileID, line: line, operation)
    guard case .invalidInput = error else {
        throw failure("\(what): expected EventStoreError.invalidInput, actual \(error)", fileID, line)
    }
}

private func expectConflict<T>(
    _ what: String, stream: String, expected: ExpectedVersion, actual: Int64,
    fileID: String = #fileID, line: Int = #line, _ operation: () async throws -> T
) async throws {
    let error = try await expectStoreError(what, fileID: fileID, line: line, operation)
    let wanted = EventStoreError.wrongExpectedVersion(stream: stream, expected: expected, actual: actual)
    if error != wanted {
        throw failure("\(what): expected \(wanted), actual \(error)", fileID, line)
    }
}

/// Whether two JSON documents are equal, ignoring key order and whitespace (a database may
/// store JSON in a normalised form).
private func sameJSON(_ a: Data, _ b: Data) -> Bool {
    if a == b { return true }
    func normalised(_ d: Data) -> Data? {
        guard let object = try? JSONSerialization.jsonObject(with: d, options: .fragmentsAllowed) else {
            return nil
        }
        return try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed])
    }
    guard let na = normalised(a), let nb = normalised(b) else { return false }
    return na == nb
}

private func json(_ data: Data) -> String { String(decoding: data.prefix(200), as: UTF8.self) }

/// Waits for `operation` at most `seconds`; nil when the time ran out.
private func withTimeout<T: Sendable>(
    seconds: Double, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { return nil }
        return first
    }
}

// MARK: - Fixture

/// Unique names for one check, and events to append.
private struct Fixture: Sendable {
    /// Lowercase letters only, so it is valid in categories and type names.
    let tag: String

    init() {
        var generator = SystemRandomNumberGenerator()
        let letters = Array("abcdefghijklmnopqrstuvwxyz")
        tag = String((0..<6).map { _ in letters[Int(generator.next() % UInt64(letters.count))] })
    }

    /// A category of this check: `<name><tag>`.
    func category(_ name: String) -> String { "\(name)\(tag)" }
    /// A stream `<name><tag>-<id>`.
    func stream(_ name: String, _ id: String = "1") -> String { "\(name)\(tag)-\(id)" }
    /// A type name `<Name><Tag>`.
    func type(_ name: String) -> String { "\(name)\(tag.capitalized)" }

    func event(
        _ type: String = "Tested", _ n: Int = 0, text: String = "", schemaVersion: Int = 1,
        metadata: EventMetadata = EventMetadata()
    ) -> EventData {
        EventData(
            id: UUIDv7.next(), type: self.type(type), schemaVersion: schemaVersion,
            data: Data(#"{"n":\#(n),"text":\#(quoted(text))}"#.utf8), metadata: metadata)
    }

    func events(_ count: Int, _ type: String = "Tested", from n: Int = 0) -> [EventData] {
        (0..<count).map { event(type, n + $0) }
    }
}

private func quoted(_ s: String) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: [s], options: [])) ?? Data("[\"\"]".utf8)
    return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
}

/// What a check can observe of a store, to prove that a rejected operation wrote nothing.
private struct Observed: Equatable, CustomStringConvertible {
    var head: LogPosition
    var versions: [String: Int64]
    var eventsAfterBaseline: [UUID]

    static func of(_ store: any EventStore, streams: [String], since baseline: LogPosition) async throws -> Observed {
        var versions: [String: Int64] = [:]
        for s in streams { versions[s] = try await store.streamVersion(s) }
        let all = try await readAllEvents(store, after: baseline)
        return Observed(head: try await store.headPosition(), versions: versions, eventsAfterBaseline: all.map(\.id))
    }

    var description: String {
        "head \(head), versions \(versions.sorted { $0.key < $1.key }), \(eventsAfterBaseline.count) events after the baseline"
    }
}

private func pageSize(_ store: any EventStore, _ wanted: Int = 500) -> Int {
    max(1, min(wanted, store.limits.maxPageSize))
}

/// Every event after `position`, read in pages.
private func readAllEvents(
    _ store: any EventStore, after position: LogPosition, filter: EventFilter = .all, page: Int? = nil,
    fileID: String = #fileID, line: Int = #line
) async throws -> [RecordedEvent] {
    let limit = page ?? pageSize(store)
    var result: [RecordedEvent] = []
    var checkpoint = position
    while true {
        let batch = try await store.readAll(after: checkpoint, limit: limit, filter: filter)
        try expect(
            batch.count <= limit, "readAll(limit: \(limit)) returned \(batch.count) events", fileID: fileID, line: line)
        for e in batch {
            try expect(
                e.logPosition > checkpoint,
                "readAll(after: \(checkpoint)) returned an event at \(e.logPosition), not after the checkpoint",
                fileID: fileID, line: line)
            checkpoint = e.logPosition
        }
        result += batch
        if batch.isEmpty { return result }
    }
}

/// Every event of `stream`, read forward in pages.
private func readWholeStream(_ store: any EventStore, _ stream: String, page: Int? = nil) async throws
    -> [RecordedEvent]
{
    let limit = page ?? pageSize(store)
    var result: [RecordedEvent] = []
    while true {
        let batch = try await store.readStream(stream, from: Int64(result.count) + 1, direction: .forward, limit: limit)
        result += batch
        if batch.count < limit { return result }
    }
}

private func describe(_ events: [RecordedEvent]) -> String {
    "[" + events.prefix(20).map { "\($0.stream)@\($0.streamVersion)#\($0.position)" }.joined(separator: ", ")
        + (events.count > 20 ? ", ... (\(events.count))" : "") + "]"
}

private func versions(_ events: [RecordedEvent]) -> [Int64] { events.map(\.streamVersion) }

/// The parts of an append result that must match between the original and a replay.
private func identity(_ r: AppendResult) -> String {
    "\(r.stream) v\(r.firstVersion)...\(r.lastVersion) @\(r.firstPosition)...\(r.lastPosition) tx \(r.transaction)"
}

// MARK: - Round trip, versions, notifications

extension StoreConformance {
    static var basicChecks: [ConformanceCheck] {
        [
            ConformanceCheck("round trip of every field") { store in
                let fx = Fixture()
                let head0 = try await store.headPosition()
                let stream = fx.stream("trip")
                let command = UUIDv7.next()
                let cause = UUIDv7.next()
                let correlation = UUIDv7.next()
                let events = [
                    EventData(
                        id: UUIDv7.next(), type: fx.type("Opened"), schemaVersion: 1,
                        data: Data(#"{"owner":"Ana \"A\" Løvåsen ✓","n":1,"nested":{"list":[1,2.5,null,true]}}"#.utf8),
                        metadata: EventMetadata(
                            commandID: command, causationID: cause, correlationID: correlation,
                            fields: ["user": "ana", "tenant": "théâtre ✓", "empty": ""])),
                    EventData(
                        id: UUIDv7.next(), type: fx.type("Renamed"), schemaVersion: 3,
                        data: Data(#"{"name":"x"}"#.utf8), metadata: EventMetadata()),
                    EventData(
                        id: UUIDv7.next(), type: fx.type("Opened"), schemaVersion: 1, data: Data("{}".utf8),
                        metadata: EventMetadata(correlationID: correlation)),
                ]
                let before = Date()
                let result = try await store.append(events, to: stream, expected: .noStream, commandID: command)
                let after = Date()
                try expectEqual(result.stream, stream, "AppendResult.stream")
                try expectEqual(result.firstVersion, 1, "AppendResult.firstVersion of a new stream")
                try expectEqual(result.lastVersion, 3, "AppendResult.lastVersion after 3 events")
                try expectEqual(result.isDuplicate, false, "AppendResult.isDuplicate of a first append")
                try expect(
                    result.firstPosition <= result.lastPosition,
                    "AppendResult positions: first \(result.firstPosition) > last \(result.lastPosition)")
                try expect(
                    LogPosition(transaction: result.transaction, position: result.firstPosition) > head0,
                    "the first appended position \(result.firstPosition) is not after the head \(head0) before the append"
                )

                let read = try await store.readStream(stream, from: 1, direction: .forward, limit: 10)
                try expectEqual(read.count, 3, "events read back from \(stream)")
                for (i, (sent, got)) in zip(events, read).enumerated() {
                    let at = "event \(i + 1)"
                    try expectEqual(got.stream, stream, "\(at) stream")
                    try expectEqual(got.streamVersion, Int64(i + 1), "\(at) streamVersion")
                    try expectEqual(got.id, sent.id, "\(at) id")
                    try expectEqual(got.type, sent.type, "\(at) type")
                    try expectEqual(got.schemaVersion, sent.schemaVersion, "\(at) schemaVersion")
                    try expect(
                        sameJSON(got.data, sent.data),
                        "\(at) data: expected \(json(sent.data)), actual \(json(got.data))")
                    try expectEqual(got.metadata, sent.metadata, "\(at) metadata")
                    try expectEqual(got.transaction, result.transaction, "\(at) transaction")
                    try expect(
                        got.recordedAt >= before.addingTimeInterval(-5)
                            && got.recordedAt <= after.addingTimeInterval(5),
                        "\(at) recordedAt \(got.recordedAt) is not within 5 s of the append (\(before)...\(after))")
                }
                try expectEqual(read.first?.position, result.firstPosition, "position of the first event")
                try expectEqual(read.last?.position, result.lastPosition, "position of the last event")
                try expect(
                    zip(read, read.dropFirst()).allSatisfy { $0.logPosition < $1.logPosition },
                    "positions within one append are not strictly increasing: \(read.map(\.position))")

                let logged = try await store.readAll(after: head0, limit: 10, filter: .all)
                try expectEqual(logged, read, "readAll after the earlier head vs readStream")
                try expectEqual(try await store.streamVersion(stream), 3, "streamVersion")
                try expectEqual(try await store.headPosition(), result.lastLogPosition, "headPosition after the append")

                let second = try await store.append(
                    [fx.event("Renamed", 7)], to: stream, expected: .exact(3), commandID: nil)
                try expectEqual(second.firstVersion, 4, "firstVersion of a second append")
                try expectEqual(second.lastVersion, 4, "lastVersion of a second append")
                try expect(
                    second.lastLogPosition > result.lastLogPosition,
                    "a later append's position \(second.lastLogPosition) is not after the earlier \(result.lastLogPosition)"
                )
            },

            ConformanceCheck("stream ids with unicode and punctuation") { store in
                let fx = Fixture()
                let streams = [fx.stream("uni", "café-✓-名前"), fx.stream("uni", "a b/c'd\"e%_f"), "nodash\(fx.tag)"]
                for (i, s) in streams.enumerated() {
                    _ = try await store.append([fx.event("Tested", i)], to: s, expected: .noStream, commandID: nil)
                }
                for (i, s) in streams.enumerated() {
                    let read = try await store.readStream(s, from: 1, direction: .forward, limit: 10)
                    try expectEqual(read.map(\.stream), [s], "stream read back")
                    try expect(sameJSON(read[0].data, fx.event("Tested", i).data), "data of \(s)")
                    try expectEqual(try await store.streamVersion(s), 1, "streamVersion of \(s)")
                }
            },

            ConformanceCheck("ids compare byte for byte (NFC and NFD are two streams)") { store in
                let fx = Fixture()
                // The same text, precomposed (NFC) and with a combining accent (NFD): Swift's
                // String calls them equal, the databases do not. Every store must agree.
                let nfc = "caf\u{E9}\(fx.tag)"
                let nfd = "cafe\u{301}\(fx.tag)"
                let (streamNFC, streamNFD) = ("\(nfc)-1", "\(nfd)-1")
                let head0 = try await store.headPosition()
                let a = try await store.append(
                    [EventData(type: "T\u{E9}\(fx.tag)", data: Data(#"{"n":1}"#.utf8))], to: streamNFC,
                    expected: .noStream, commandID: nil)
                let b = try await store.append(
                    [EventData(type: "Te\u{301}\(fx.tag)", data: Data(#"{"n":2}"#.utf8))], to: streamNFD,
                    expected: .noStream, commandID: nil)
                try expectEqual(a.lastVersion, 1, "version of the NFC stream")
                try expectEqual(b.lastVersion, 1, "version of the NFD stream (a stream of its own)")
                for (stream, n) in [(streamNFC, 1), (streamNFD, 2)] {
                    let read = try await store.readStream(stream, from: 1, direction: .forward, limit: 10)
                    try expectEqual(read.count, 1, "events of \(Array(stream.utf8))")
                    try expect(
                        read.allSatisfy { Array($0.stream.utf8) == Array(stream.utf8) },
                        "stream bytes read back: \(read.map { Array($0.stream.utf8) })")
                    try expect(sameJSON(read[0].data, Data(#"{"n":\#(n)}"#.utf8)), "data of \(Array(stream.utf8))")
                    try expectEqual(try await store.streamVersion(stream), 1, "streamVersion of \(Array(stream.utf8))")
                }
                let byCategory = try await store.readAll(
                    after: head0, limit: 10, filter: EventFilter(categories: [nfd]))
                try expect(
                    byCategory.map { Array($0.stream.utf8) } == [Array(streamNFD.utf8)],
                    "category filter on the NFD spelling returned \(byCategory.map { Array($0.stream.utf8) })")
                let byType = try await store.readAll(
                    after: head0, limit: 10, filter: EventFilter(types: ["T\u{E9}\(fx.tag)"]))
                try expect(
                    byType.map { Array($0.stream.utf8) } == [Array(streamNFC.utf8)],
                    "type filter on the NFC spelling returned \(byType.map { Array($0.stream.utf8) })")
                let all = try await store.readAll(after: head0, limit: 10, filter: .all)
                try expectEqual(
                    all.map { Array($0.category.utf8) }, [Array(nfc.utf8), Array(nfd.utf8)], "categories, byte for byte"
                )
            },

            ConformanceCheck("streamVersion and headPosition") { store in
                let fx = Fixture()
                let head0 = try await store.headPosition()
                let (a, b) = (fx.stream("ver", "a"), fx.stream("ver", "b"))
                try expectEqual(try await store.streamVersion(a), 0, "version of a stream with no events")
                let r1 = try await store.append(fx.events(3), to: a, expected: .any, commandID: nil)
                try expectEqual(try await store.streamVersion(a), 3, "version after 3 events")
                try expectEqual(try await store.headPosition(), r1.lastLogPosition, "head after the first append")
                try expect(r1.lastLogPosition > head0, "head did not move: \(head0) -> \(r1.lastLogPosition)")
                let r2 = try await store.append(fx.events(2), to: b, expected: .any, commandID: nil)
                try expectEqual(try await store.streamVersion(a), 3, "version of a after appending to b")
                try expectEqual(try await store.streamVersion(b), 2, "version of b")
                try expectEqual(try await store.headPosition(), r2.lastLogPosition, "head after the second append")
                try expect(r2.lastLogPosition > r1.lastLogPosition, "head moved backwards")
                let after = try await store.readAll(after: r2.lastLogPosition, limit: 10, filter: .all)
                try expect(after.isEmpty, "readAll after the head returned \(describe(after))")
            },

            ConformanceCheck("append notifications") { store in
                let fx = Fixture()
                let stream = fx.stream("note")
                let listeners = [store.appendNotifications(), store.appendNotifications()]
                enum Outcome: Sendable { case hint, ended, appendedWithoutHint }
                // Hints can be lost (the contract says so), so keep appending, at most ten times,
                // until every listener got one.
                let outcome = try await withThrowingTaskGroup(of: Outcome.self) { group in
                    group.addTask {
                        for hints in listeners {
                            var iterator = hints.makeAsyncIterator()
                            if await iterator.next() == nil { return .ended }
                        }
                        return .hint
                    }
                    group.addTask {
                        for _ in 0..<10 {
                            _ = try await store.append([fx.event()], to: stream, expected: .any, commandID: nil)
                            try await Task.sleep(for: .seconds(1))
                        }
                        return .appendedWithoutHint
                    }
                    defer { group.cancelAll() }
                    return try await group.next() ?? .ended
                }
                switch outcome {
                case .hint: break
                case .ended: throw failure("appendNotifications() ended instead of yielding a hint", #fileID, #line)
                case .appendedWithoutHint:
                    throw failure("no hint from appendNotifications() within 10 s of appends", #fileID, #line)
                }
            },
        ]
    }

    // MARK: Expected versions

    static var expectedVersionChecks: [ConformanceCheck] {
        [
            ConformanceCheck("expected version any") { store in
                let fx = Fixture()
                let s = fx.stream("any")
                let r1 = try await store.append([fx.event()], to: s, expected: .any, commandID: nil)
                try expectEqual(r1.lastVersion, 1, "any on a new stream")
                let r2 = try await store.append(fx.events(2), to: s, expected: .any, commandID: nil)
                try expectEqual([r2.firstVersion, r2.lastVersion], [2, 3], "any on an existing stream")
            },

            ConformanceCheck("expected version noStream") { store in
                let fx = Fixture()
                let s = fx.stream("nostream")
                let r1 = try await store.append(fx.events(2), to: s, expected: .noStream, commandID: nil)
                try expectEqual(r1.lastVersion, 2, "noStream on a new stream")
                let baseline = try await Observed.of(store, streams: [s], since: .start)
                try await expectConflict("noStream on a stream at version 2", stream: s, expected: .noStream, actual: 2)
                {
                    try await store.append([fx.event()], to: s, expected: .noStream, commandID: nil)
                }
                try expectEqual(
                    try await Observed.of(store, streams: [s], since: .start), baseline, "store after the conflict")
            },

            ConformanceCheck("expected version streamExists") { store in
                let fx = Fixture()
                let s = fx.stream("exists")
                let baseline = try await Observed.of(store, streams: [s], since: .start)
                try await expectConflict("streamExists on no stream", stream: s, expected: .streamExists, actual: 0) {
                    try await store.append([fx.event()], to: s, expected: .streamExists, commandID: nil)
                }
                try expectEqual(
                    try await Observed.of(store, streams: [s], since: .start), baseline, "store after the conflict")
                _ = try await store.append([fx.event()], to: s, expected: .any, commandID: nil)
                let r = try await store.append(fx.events(2), to: s, expected: .streamExists, commandID: nil)
                try expectEqual([r.firstVersion, r.lastVersion], [2, 3], "streamExists on a stream at version 1")
            },

            ConformanceCheck("expected version exact") { store in
                let fx = Fixture()
                let s = fx.stream("exact")
                try await expectConflict("exact(1) on no stream", stream: s, expected: .exact(1), actual: 0) {
                    try await store.append([fx.event()], to: s, expected: .exact(1), commandID: nil)
                }
                let r0 = try await store.append(fx.events(2), to: s, expected: .exact(0), commandID: nil)
                try expectEqual(r0.lastVersion, 2, "exact(0) on no stream")
                let baseline = try await Observed.of(store, streams: [s], since: .start)
                for wrong: Int64 in [0, 1, 3, 100] {
                    try await expectConflict(
                        "exact(\(wrong)) on version 2", stream: s, expected: .exact(wrong), actual: 2
                    ) {
                        try await store.append(fx.events(2), to: s, expected: .exact(wrong), commandID: nil)
                    }
                }
                try expectEqual(
                    try await Observed.of(store, streams: [s], since: .start), baseline, "store after conflicts")
                let r = try await store.append([fx.event()], to: s, expected: .exact(2), commandID: nil)
                try expectEqual([r.firstVersion, r.lastVersion], [3, 3], "exact(2) on version 2")
            },
        ]
    }

    // MARK: Idempotency

    static var idempotencyChecks: [ConformanceCheck] {
        [
            ConformanceCheck("idempotent append returns the original result") { store in
                let fx = Fixture()
                let s = fx.stream("idem")
                let command = UUIDv7.next()
                let events = [fx.event("Tested", 1), fx.event("Other", 2)]
                let original = try await store.append(events, to: s, expected: .noStream, commandID: command)
                try expectEqual(original.isDuplicate, false, "isDuplicate of the first append")
                let baseline = try await Observed.of(store, streams: [s], since: .start)

                let same = try await store.append(events, to: s, expected: .noStream, commandID: command)
                try expectEqual(same.isDuplicate, true, "isDuplicate of a replay with the same event ids")
                try expectEqual(identity(same), identity(original), "result of a replay with the same event ids")

                // A retried command encodes its events again, with fresh ids.
                let fresh = events.map {
                    EventData(type: $0.type, schemaVersion: $0.schemaVersion, data: $0.data, metadata: $0.metadata)
                }
                let replay = try await store.append(fresh, to: s, expected: .exact(0), commandID: command)
                try expectEqual(replay.isDuplicate, true, "isDuplicate of a replay with fresh event ids")
                try expectEqual(identity(replay), identity(original), "result of a replay with fresh event ids")
                try expectEqual(
                    try await Observed.of(store, streams: [s], since: .start), baseline, "store after replays")

                let stored = try await store.appendResult(forCommand: command)
                try expectEqual(stored.map(identity), identity(original), "appendResult(forCommand:)")
                let unknown = try await store.appendResult(forCommand: UUIDv7.next())
                try expect(
                    unknown == nil,
                    "appendResult(forCommand:) of an unknown id: expected nil, actual \(String(describing: unknown))")

                // Later appends don't change what a replay returns.
                _ = try await store.append(
                    [fx.event("Tested", 3)], to: s, expected: .exact(2), commandID: UUIDv7.next())
                let late = try await store.append(events, to: s, expected: .exact(3), commandID: command)
                try expectEqual(late.isDuplicate, true, "isDuplicate of a replay after another append")
                try expectEqual(identity(late), identity(original), "result of a replay after another append")
                try expectEqual(try await store.streamVersion(s), 3, "version after the replays")
            },

            ConformanceCheck("same command id with different events is a conflict") { store in
                let fx = Fixture()
                let s = fx.stream("idemconflict")
                let command = UUIDv7.next()
                let events = [fx.event("Tested", 1), fx.event("Tested", 2)]
                let original = try await store.append(events, to: s, expected: .any, commandID: command)
                let baseline = try await Observed.of(store, streams: [s], since: .start)
                let variants: [(String, [EventData])] = [
                    ("different data", [fx.event("Tested", 1), fx.event("Tested", 99)]),
                    ("fewer events", [fx.event("Tested", 1)]),
                    ("more events", [fx.event("Tested", 1), fx.event("Tested", 2), fx.event("Tested", 3)]),
                    ("different type", [fx.event("Tested", 1), fx.event("Other", 2)]),
                    ("different schema version", [fx.event("Tested", 1), fx.event("Tested", 2, schemaVersion: 2)]),
                ]
                for (what, variant) in variants {
                    let error = try await expectStoreError("same command id, \(what)") {
                        try await store.append(variant, to: s, expected: .any, commandID: command)
                    }
                    guard case .idempotencyConflict(let id, _) = error, id == command else {
                        throw failure(
                            "same command id, \(what): expected idempotencyConflict(commandID: \(command)), actual \(error)",
                            #fileID, #line)
                    }
                }
                try expectEqual(
                    try await Observed.of(store, streams: [s], since: .start), baseline, "store after conflicts")
                let stored = try await store.appendResult(forCommand: command)
                try expectEqual(stored.map(identity), identity(original), "appendResult(forCommand:) after conflicts")
            },

            ConformanceCheck("a rejected append does not use up its command id") { store in
                let fx = Fixture()
                let s = fx.stream("idemreject")
                let command = UUIDv7.next()
                try await expectConflict("exact(5) on no stream", stream: s, expected: .exact(5), actual: 0) {
                    try await store.append([fx.event()], to: s, expected: .exact(5), commandID: command)
                }
                try await expectInvalidInput("an empty append") {
                    try await store.append([], to: s, expected: .any, commandID: command)
                }
                let stored = try await store.appendResult(forCommand: command)
                try expect(
                    stored == nil,
                    "appendResult(forCommand:) after rejected appends: expected nil, actual \(String(describing: stored))"
                )
                let r = try await store.append([fx.event()], to: s, expected: .noStream, commandID: command)
                try expectEqual(r.isDuplicate, false, "isDuplicate of the first accepted append")
                try expectEqual(r.lastVersion, 1, "version of the first accepted append")
            },

            ConformanceCheck("appends without command id are not deduplicated") { store in
                let fx = Fixture()
                let s = fx.stream("noidem")
                let e = fx.event("Tested", 1)
                _ = try await store.append([e], to: s, expected: .any, commandID: nil)
                let copy = EventData(type: e.type, schemaVersion: e.schemaVersion, data: e.data, metadata: e.metadata)
                let r = try await store.append([copy], to: s, expected: .any, commandID: nil)
                try expectEqual(r.isDuplicate, false, "isDuplicate without a command id")
                try expectEqual(try await store.streamVersion(s), 2, "version after two equal appends")
            },
        ]
    }

    // MARK: Reads

    static var readChecks: [ConformanceCheck] {
        [
            ConformanceCheck("readStream forward and backward in pages") { store in
                let fx = Fixture()
                let (s, other) = (fx.stream("pages", "s"), fx.stream("pages", "t"))
                var ids: [UUID] = []
                for i in 0..<10 {
                    let e = fx.event("Tested", i)
                    ids.append(e.id)
                    _ = try await store.append([e], to: s, expected: .exact(Int64(i)), commandID: nil)
                    _ = try await store.append([fx.event("Tested", 100 + i)], to: other, expected: .any, commandID: nil)
                }
                func read(_ from: Int64, _ direction: ReadDirection, _ limit: Int) async throws -> [Int64] {
                    let page = try await store.readStream(s, from: from, direction: direction, limit: limit)
                    try expect(page.allSatisfy { $0.stream == s }, "readStream(\(s)) returned events of other streams")
                    for e in page {
                        try expectEqual(e.id, ids[Int(e.streamVersion) - 1], "id of version \(e.streamVersion)")
                    }
                    return versions(page)
                }
                try expectEqual(try await read(1, .forward, 3), [1, 2, 3], "forward from 1, limit 3")
                try expectEqual(try await read(4, .forward, 3), [4, 5, 6], "forward from 4, limit 3")
                try expectEqual(try await read(9, .forward, 5), [9, 10], "forward from 9, limit 5")
                try expectEqual(try await read(10, .forward, 1), [10], "forward from 10, limit 1")
                try expectEqual(try await read(11, .forward, 5), [], "forward from beyond the end")
                try expectEqual(try await read(1, .forward, 100), Array(1...10), "forward, limit above the length")
                try expectEqual(try await read(10, .backward, 3), [10, 9, 8], "backward from 10, limit 3")
                try expectEqual(try await read(3, .backward, 5), [3, 2, 1], "backward from 3, limit 5")
                try expectEqual(try await read(1, .backward, 5), [1], "backward from 1")
                try expectEqual(try await read(Int64.max, .backward, 2), [10, 9], "backward from the end (Int64.max)")
                try expectEqual(
                    try await read(50, .backward, 100), Array((1...10).reversed()), "backward from beyond the end")

                var paged: [Int64] = []
                var from: Int64 = 1
                while true {
                    let page = try await read(from, .forward, 3)
                    paged += page
                    guard let last = page.last else { break }
                    from = last + 1
                }
                try expectEqual(paged, Array(1...10), "forward paging with limit 3")
                paged = []
                from = Int64.max
                while true {
                    let page = try await read(from, .backward, 4)
                    paged += page
                    guard let last = page.last, last > 1 else { break }
                    from = last - 1
                }
                try expectEqual(paged, Array((1...10).reversed()), "backward paging with limit 4")

                let unknown = fx.stream("pages", "unknown")
                let forward = try await store.readStream(unknown, from: 1, direction: .forward, limit: 10)
                let backward = try await store.readStream(unknown, from: Int64.max, direction: .backward, limit: 10)
                try expect(
                    forward.isEmpty && backward.isEmpty,
                    "an unknown stream read: expected [], actual \(describe(forward + backward))")
            },

            ConformanceCheck("readAll in pages from any position") { store in
                let fx = Fixture()
                let head0 = try await store.headPosition()
                var written: [UUID] = []
                for i in 0..<12 {
                    let events = fx.events(1 + i % 3, "Tested", from: i * 10)
                    written += events.map(\.id)
                    _ = try await store.append(events, to: fx.stream("log", "\(i % 4)"), expected: .any, commandID: nil)
                }
                let all = try await store.readAll(after: head0, limit: 1000, filter: .all)
                try expectEqual(all.map(\.id), written, "ids of readAll after the earlier head, in append order")
                try expect(
                    zip(all, all.dropFirst()).allSatisfy { $0.logPosition < $1.logPosition },
                    "positions are not strictly increasing: \(all.map(\.logPosition))")
                for size in [1, 3, 7] {
                    let paged = try await readAllEvents(store, after: head0, page: size)
                    try expectEqual(paged, all, "readAll paged by \(size)")
                }
                for k in [0, 5, written.count - 1] {
                    let suffix = try await store.readAll(after: all[k].logPosition, limit: 1000, filter: .all)
                    try expectEqual(
                        suffix.map(\.id), Array(written[(k + 1)...]), "readAll after the event at index \(k)")
                }
                let page = try await store.readAll(after: head0, limit: 5, filter: .all)
                try expectEqual(page.map(\.id), Array(written.prefix(5)), "readAll with limit 5")
            },

            ConformanceCheck("readAll filters by type and category") { store in
                let fx = Fixture()
                let head0 = try await store.headPosition()
                let (tA, tB, tC) = ("Alpha", "Beta", "Gamma")
                let streams = [
                    fx.stream("shows", "1"), fx.stream("shows", "2-x"), fx.stream("tickets", "1"),
                    "\(fx.category("shows"))x-1",  // a category that merely starts like another
                    "\(fx.category("nodash"))",  // no dash: the whole id is the category
                    fx.stream("o_x", "1"), fx.stream("oax", "1"),  // `_` must not act as a wildcard
                ]
                var written: [RecordedEvent] = []
                for round in 0..<3 {
                    for (i, s) in streams.enumerated() {
                        let type = [tA, tB, tC][(i + round) % 3]
                        _ = try await store.append([fx.event(type, round)], to: s, expected: .any, commandID: nil)
                    }
                }
                written = try await readAllEvents(store, after: head0)
                try expectEqual(written.count, 3 * streams.count, "events written")

                func check(_ filter: EventFilter, _ what: String) async throws {
                    let expected = written.filter { filter.matches(type: $0.type, stream: $0.stream) }
                    let got = try await store.readAll(after: head0, limit: 1000, filter: filter)
                    try expectEqual(got.map(\.id), expected.map(\.id), "\(what): ids")
                    for size in [1, 2] {
                        var checkpoint = head0
                        var paged: [RecordedEvent] = []
                        while true {
                            let page = try await store.readAll(after: checkpoint, limit: size, filter: filter)
                            let remaining = expected.count - paged.count
                            try expectEqual(
                                page.count, min(size, remaining),
                                "\(what), limit \(size): page size with \(remaining) matches left")
                            guard let last = page.last else { break }
                            paged += page
                            checkpoint = last.logPosition
                        }
                        try expectEqual(paged.map(\.id), expected.map(\.id), "\(what), paged by \(size)")
                    }
                }
                try await check(EventFilter(types: [fx.type(tA)]), "type \(tA)")
                try await check(EventFilter(types: [fx.type(tA), fx.type(tC)]), "types \(tA), \(tC)")
                try await check(EventFilter(categories: [fx.category("shows")]), "category shows")
                try await check(
                    EventFilter(categories: [fx.category("shows"), fx.category("tickets")]), "categories shows, tickets"
                )
                try await check(EventFilter(categories: [fx.category("nodash")]), "category of a stream without dash")
                try await check(EventFilter(categories: [fx.category("o_x")]), "category with an underscore")
                try await check(
                    EventFilter(types: [fx.type(tB)], categories: [fx.category("shows")]),
                    "type \(tB) in category shows")
                try await check(EventFilter(types: [fx.type("Missing")]), "a type nobody wrote")
                try await check(EventFilter(categories: ["\(fx.tag)none"]), "a category nobody wrote")
                let none = try await store.readAll(after: head0, limit: 100, filter: EventFilter(types: []))
                try expect(none.isEmpty, "an empty set of types matches nothing; actual \(describe(none))")
                let noCategory = try await store.readAll(after: head0, limit: 100, filter: EventFilter(categories: []))
                try expect(
                    noCategory.isEmpty, "an empty set of categories matches nothing; actual \(describe(noCategory))")
                for e in written where e.stream == fx.stream("shows", "2-x") {
                    try expectEqual(e.category, fx.category("shows"), "category of \(e.stream)")
                }
            },
        ]
    }

    // MARK: Snapshots

    static var snapshotChecks: [ConformanceCheck] {
        [
            ConformanceCheck("snapshots") { store in
                let fx = Fixture()
                let (s, t) = (fx.stream("snap", "s"), fx.stream("snap", "t"))
                let none = try await store.loadSnapshot(s, schemaVersion: 1)
                try expect(
                    none == nil, "snapshot of a stream without one: expected nil, actual \(String(describing: none))")

                let first = Snapshot(
                    stream: s, version: 3, schemaVersion: 1, data: Data(#"{"count":3,"name":"ü"}"#.utf8))
                try await store.saveSnapshot(first)
                func load(_ stream: String, _ schema: Int, _ what: String) async throws -> Snapshot? {
                    let snap = try await store.loadSnapshot(stream, schemaVersion: schema)
                    if let snap {
                        try expectEqual(snap.stream, stream, "\(what): stream")
                        try expectEqual(snap.schemaVersion, schema, "\(what): schemaVersion")
                    }
                    return snap
                }
                let loaded = try await load(s, 1, "the saved snapshot")
                try expectEqual(loaded?.version, 3, "version of the saved snapshot")
                try expect(
                    loaded.map { sameJSON($0.data, first.data) } ?? false,
                    "data of the saved snapshot: expected \(json(first.data)), actual \(loaded.map { json($0.data) } ?? "nil")"
                )
                let otherSchema = try await load(s, 2, "another schema version")
                try expect(
                    otherSchema == nil,
                    "a snapshot of another schema version must be ignored; actual \(String(describing: otherSchema))")
                let otherStream = try await load(t, 1, "another stream")
                try expect(
                    otherStream == nil, "another stream has no snapshot; actual \(String(describing: otherStream))")

                try await store.saveSnapshot(
                    Snapshot(stream: s, version: 8, schemaVersion: 1, data: Data(#"{"count":8}"#.utf8)))
                let newer = try await load(s, 1, "the newer snapshot")
                try expectEqual(newer?.version, 8, "version after saving a newer snapshot")
                try expect(
                    newer.map { sameJSON($0.data, Data(#"{"count":8}"#.utf8)) } ?? false, "data of the newer snapshot")

                try await store.saveSnapshot(
                    Snapshot(stream: s, version: 5, schemaVersion: 1, data: Data(#"{"count":5}"#.utf8)))
                try expectEqual(
                    try await load(s, 1, "after saving an older one")?.version, 8,
                    "an older snapshot must not replace a newer one")

                try await store.saveSnapshot(Snapshot(stream: t, version: 2, schemaVersion: 1, data: Data("{}".utf8)))
                try expectEqual(
                    try await load(s, 1, "s after saving t")?.version, 8, "snapshots of other streams are independent")

                try await store.saveSnapshot(
                    Snapshot(stream: s, version: 9, schemaVersion: 2, data: Data(#"{"v2":true}"#.utf8)))
                let v2 = try await load(s, 2, "a new schema version")
                try expectEqual(v2?.version, 9, "version of a snapshot with a new schema version")
                try expect(
                    v2.map { sameJSON($0.data, Data(#"{"v2":true}"#.utf8)) } ?? false, "data of the new schema version")
            }
        ]
    }

    // MARK: Invalid input

    /// A check that an operation is rejected with `.invalidInput` and changes nothing.
    private static func rejects(
        _ name: String,
        _ operation: @escaping @Sendable (any EventStore, Fixture, _ seeded: String) async throws -> Void
    ) -> ConformanceCheck {
        ConformanceCheck("rejects \(name)") { store in
            let fx = Fixture()
            let head0 = try await store.headPosition()
            let seeded = fx.stream("seed")
            _ = try await store.append(fx.events(2), to: seeded, expected: .any, commandID: nil)
            let before = try await Observed.of(store, streams: [seeded], since: head0)
            try await expectInvalidInput(name) { try await operation(store, fx, seeded) }
            let after = try await Observed.of(store, streams: [seeded], since: head0)
            try expect(after == before, "\(name): the store changed: before \(before), after \(after)")
        }
    }

    /// Appends `events` to `stream` with a fresh command id (so a store that records command ids
    /// of rejected appends would change).
    private static func append(
        _ store: any EventStore, _ events: [EventData], to stream: String, expected: ExpectedVersion = .any
    ) async throws -> AppendResult {
        try await store.append(events, to: stream, expected: expected, commandID: UUIDv7.next())
    }

    static var invalidInputChecks: [ConformanceCheck] {
        [
            rejects("an empty stream id") { store, fx, _ in
                _ = try await append(store, [fx.event()], to: "")
            },
            rejects("a stream id over the byte limit") { store, fx, _ in
                let id = String(repeating: "s", count: store.limits.maxStreamIDBytes + 1)
                _ = try await append(store, [fx.event()], to: id)
            },
            rejects("a stream id over the byte limit in multi-byte characters") { store, fx, _ in
                // Fewer characters than the limit, more UTF-8 bytes.
                let id = String(repeating: "é", count: store.limits.maxStreamIDBytes / 2 + 1)
                _ = try await append(store, [fx.event()], to: id)
            },
            rejects("a stream id with NUL") { store, fx, _ in
                _ = try await append(store, [fx.event()], to: fx.stream("nul", "a\u{0}b"))
            },
            rejects("a payload over the limit") { store, fx, seeded in
                let big = EventData(type: fx.type("Big"), data: payload(bytes: store.limits.maxPayloadBytes + 1))
                _ = try await append(store, [fx.event(), big], to: seeded)
            },
            rejects("too many events in one append") { store, fx, seeded in
                _ = try await append(store, fx.events(store.limits.maxEventsPerAppend + 1), to: seeded)
            },
            rejects("an empty append") { store, _, seeded in
                _ = try await append(store, [], to: seeded)
            },
            rejects("an empty type name") { store, fx, seeded in
                _ = try await append(store, [EventData(type: "", data: Data("{}".utf8))], to: seeded)
            },
            rejects("a type name over the limit") { store, fx, seeded in
                let type = String(repeating: "T", count: store.limits.maxTypeNameBytes + 1)
                _ = try await append(store, [fx.event(), EventData(type: type, data: Data("{}".utf8))], to: seeded)
            },
            rejects("a duplicate event id within one append") { store, fx, seeded in
                let e = fx.event()
                _ = try await append(store, [e, fx.event(), e], to: seeded)
            },
            rejects("an event id already stored in the stream") { store, fx, seeded in
                let stored = try await store.readStream(seeded, from: 1, direction: .forward, limit: 1)[0]
                let copy = EventData(id: stored.id, type: fx.type("Copy"), data: Data("{}".utf8))
                _ = try await append(store, [fx.event(), copy], to: seeded)
            },
            rejects("an event id already stored in another stream") { store, fx, seeded in
                let stored = try await store.readStream(seeded, from: 2, direction: .forward, limit: 1)[0]
                let copy = EventData(id: stored.id, type: fx.type("Copy"), data: Data("{}".utf8))
                _ = try await append(store, [fx.event(), copy], to: fx.stream("other"), expected: .noStream)
            },
            rejects("a metadata field key with NUL") { store, fx, seeded in
                let e = fx.event(metadata: EventMetadata(fields: ["us\u{0}er": "ana"]))
                _ = try await append(store, [fx.event(), e], to: seeded)
            },
            rejects("a metadata field value with NUL") { store, fx, seeded in
                let e = fx.event(metadata: EventMetadata(fields: ["user": "a\u{0}na"]))
                _ = try await append(store, [fx.event(), e], to: seeded)
            },
            rejects("metadata fields over the limit") { store, fx, seeded in
                let value = String(repeating: "m", count: store.limits.maxMetadataBytes)
                let e = fx.event(metadata: EventMetadata(fields: ["k": value]))
                _ = try await append(store, [fx.event(), e], to: seeded)
            },
            rejects("an append whose data is over the byte limit") { store, fx, seeded in
                // Events each within the payload limit, together over the append limit.
                let size = max(64, min(store.limits.maxPayloadBytes, store.limits.maxAppendBytes))
                let count = store.limits.maxAppendBytes / size + 1
                let events = (0..<count).map { _ in EventData(type: fx.type("Big"), data: payload(bytes: size)) }
                _ = try await append(store, events, to: seeded)
            },
            rejects("readStream with page size 0") { store, _, seeded in
                _ = try await store.readStream(seeded, from: 1, direction: .forward, limit: 0)
            },
            rejects("readStream with a negative page size") { store, _, seeded in
                _ = try await store.readStream(seeded, from: 1, direction: .backward, limit: -1)
            },
            rejects("readStream with a page size over the limit") { store, _, seeded in
                _ = try await store.readStream(
                    seeded, from: 1, direction: .forward, limit: store.limits.maxPageSize + 1)
            },
            rejects("readAll with page size 0") { store, _, _ in
                _ = try await store.readAll(after: .start, limit: 0, filter: .all)
            },
            rejects("readAll with a page size over the limit") { store, _, _ in
                _ = try await store.readAll(after: .start, limit: store.limits.maxPageSize + 1, filter: .all)
            },
            ConformanceCheck("a rejected append leaves its command id unused") { store in
                let fx = Fixture()
                let s = fx.stream("rejectid")
                let command = UUIDv7.next()
                let big = EventData(type: fx.type("Big"), data: payload(bytes: store.limits.maxPayloadBytes + 1))
                try await expectInvalidInput("a payload over the limit") {
                    try await store.append([big], to: s, expected: .any, commandID: command)
                }
                let stored = try await store.appendResult(forCommand: command)
                try expect(
                    stored == nil,
                    "appendResult(forCommand:) after a rejected append: expected nil, actual \(String(describing: stored))"
                )
                let r = try await store.append([fx.event()], to: s, expected: .noStream, commandID: command)
                try expectEqual(r.isDuplicate, false, "isDuplicate of the first accepted append")
            },
            ConformanceCheck("accepts input exactly at the limits") { store in
                let fx = Fixture()
                let limits = store.limits
                let longID =
                    fx.stream("edge", "")
                    + String(repeating: "x", count: max(0, limits.maxStreamIDBytes - fx.stream("edge", "").utf8.count))
                try expectEqual(longID.utf8.count, limits.maxStreamIDBytes, "length of the test stream id")
                let r1 = try await store.append([fx.event()], to: longID, expected: .noStream, commandID: nil)
                try expectEqual(r1.lastVersion, 1, "append to a stream id exactly at the limit")
                try expectEqual(
                    try await store.readStream(longID, from: 1, direction: .forward, limit: 1).map(\.stream), [longID],
                    "stream id exactly at the limit read back")

                let s = fx.stream("edge", "payload")
                let big = EventData(type: fx.type("Big"), data: payload(bytes: limits.maxPayloadBytes))
                _ = try await store.append([big], to: s, expected: .noStream, commandID: nil)
                let read = try await store.readStream(s, from: 1, direction: .forward, limit: 1)
                try expect(
                    read.first.map { sameJSON($0.data, big.data) } ?? false, "a payload exactly at the limit read back")

                let many = fx.events(limits.maxEventsPerAppend)
                let r2 = try await store.append(
                    many, to: fx.stream("edge", "many"), expected: .noStream, commandID: nil)
                try expectEqual(
                    r2.lastVersion, Int64(limits.maxEventsPerAppend), "an append of exactly the most events")

                let type =
                    fx.type("T")
                    + String(repeating: "t", count: max(0, limits.maxTypeNameBytes - fx.type("T").utf8.count))
                _ = try await store.append(
                    [EventData(type: type, data: Data("{}".utf8))], to: fx.stream("edge", "type"), expected: .noStream,
                    commandID: nil)

                let page = try await store.readStream(
                    fx.stream("edge", "many"), from: 1, direction: .forward, limit: limits.maxPageSize)
                try expectEqual(
                    page.count, min(limits.maxPageSize, limits.maxEventsPerAppend), "a read with the largest page")
                _ = try await store.readAll(after: .start, limit: limits.maxPageSize, filter: .all)
            },
        ]
    }

    // MARK: Concurrency

    static var concurrencyChecks: [ConformanceCheck] {
        [
            ConformanceCheck("concurrent exact appends: one winner per version") { store in
                let fx = Fixture()
                let s = fx.stream("race")
                let rounds = 5
                let contenders = 50
                var winners: [UUID] = []
                for round in 0..<rounds {
                    let v = Int64(round)
                    let outcomes = try await withThrowingTaskGroup(of: (UUID, AppendResult?, EventStoreError?).self) {
                        group in
                        for i in 0..<contenders {
                            group.addTask {
                                let e = fx.event("Tested", i)
                                do {
                                    return (
                                        e.id, try await store.append([e], to: s, expected: .exact(v), commandID: nil),
                                        nil
                                    )
                                } catch let error as EventStoreError {
                                    return (e.id, nil, error)
                                }
                            }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                    let won = outcomes.filter { $0.1 != nil }
                    try expectEqual(
                        won.count, 1, "round \(round): appends accepted with exact(\(v)) out of \(contenders)")
                    try expectEqual(won[0].1?.lastVersion, v + 1, "round \(round): the winner's version")
                    winners.append(won[0].0)
                    for (_, _, error) in outcomes where error != nil {
                        let wanted = EventStoreError.wrongExpectedVersion(stream: s, expected: .exact(v), actual: v + 1)
                        try expectEqual(error, wanted, "round \(round): a loser's error")
                    }
                }
                let stored = try await readWholeStream(store, s)
                try expectEqual(versions(stored), Array(1...Int64(rounds)), "versions of the stream")
                try expectEqual(stored.map(\.id), winners, "the stored events are the winners'")
            },

            ConformanceCheck("concurrent any appends to one stream") { store in
                let fx = Fixture()
                let s = fx.stream("anyrace")
                let tasks = 40
                let appendsPerTask = 5
                let results = try await withThrowingTaskGroup(of: [([UUID], AppendResult)].self) { group in
                    for t in 0..<tasks {
                        group.addTask {
                            var mine: [([UUID], AppendResult)] = []
                            for j in 0..<appendsPerTask {
                                let events = fx.events(1 + (t + j) % 3, "Tested", from: t * 100 + j * 10)
                                mine.append(
                                    (
                                        events.map(\.id),
                                        try await store.append(events, to: s, expected: .any, commandID: nil)
                                    ))
                            }
                            return mine
                        }
                    }
                    return try await group.reduce(into: []) { $0 += $1 }
                }
                let total = results.reduce(0) { $0 + $1.0.count }
                let stored = try await readWholeStream(store, s)
                try expectEqual(versions(stored), Array(1...Int64(total)), "versions of the stream")
                try expectEqual(Set(stored.map(\.id)).count, total, "distinct event ids stored")
                for (ids, result) in results {
                    try expectEqual(
                        Int(result.lastVersion - result.firstVersion) + 1, ids.count, "versions of one append")
                    let slice = stored[Int(result.firstVersion - 1)..<Int(result.lastVersion)]
                    try expectEqual(
                        slice.map(\.id), ids, "events at versions \(result.firstVersion)...\(result.lastVersion)")
                    try expectEqual(slice.first?.position, result.firstPosition, "first position of one append")
                    try expectEqual(slice.last?.position, result.lastPosition, "last position of one append")
                }
            },

            ConformanceCheck("concurrent writers to distinct streams keep one global order") { store in
                let fx = Fixture()
                let head0 = try await store.headPosition()
                let tasks = 32
                let appendsPerTask = 50
                let written = try await withThrowingTaskGroup(of: (String, [UUID]).self) { group in
                    for t in 0..<tasks {
                        group.addTask {
                            let s = fx.stream("many", "\(t)")
                            var ids: [UUID] = []
                            for j in 0..<appendsPerTask {
                                let events = fx.events(j % 5 == 0 ? 2 : 1, "Tested", from: j * 10)
                                let r = try await store.append(
                                    events, to: s, expected: .exact(Int64(ids.count)), commandID: nil)
                                try expectEqual(
                                    r.lastVersion, Int64(ids.count + events.count), "\(s): version after append \(j)")
                                ids += events.map(\.id)
                            }
                            return (s, ids)
                        }
                    }
                    return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
                }
                let total = written.values.reduce(0) { $0 + $1.count }
                let log = try await readAllEvents(store, after: head0)
                try expectEqual(log.count, total, "events in the global log")
                try expect(
                    zip(log, log.dropFirst()).allSatisfy { $0.logPosition < $1.logPosition },
                    "global positions are not strictly increasing")
                try expectEqual(
                    Set(log.map(\.id)), Set(written.values.flatMap { $0 }), "the set of event ids in the log")
                var perStream: [String: [RecordedEvent]] = [:]
                for e in log { perStream[e.stream, default: []].append(e) }
                for (s, ids) in written {
                    let events = perStream[s] ?? []
                    try expectEqual(events.map(\.id), ids, "\(s): events in log order")
                    try expectEqual(versions(events), Array(1...Int64(ids.count)), "\(s): versions in log order")
                }
            },

            ConformanceCheck("concurrent appends with the same command id store the events once") { store in
                let fx = Fixture()
                let s = fx.stream("sameid")
                let command = UUIDv7.next()
                let template = fx.events(3, "Tested", from: 1)
                let results = try await withThrowingTaskGroup(of: AppendResult.self) { group in
                    for _ in 0..<20 {
                        group.addTask {
                            // Each retry encodes the same events again, with fresh ids.
                            let events = template.map {
                                EventData(
                                    type: $0.type, schemaVersion: $0.schemaVersion, data: $0.data, metadata: $0.metadata
                                )
                            }
                            return try await store.append(events, to: s, expected: .any, commandID: command)
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                try expectEqual(results.filter { !$0.isDuplicate }.count, 1, "appends that wrote (not duplicates)")
                let original = results.first { !$0.isDuplicate }!
                for r in results { try expectEqual(identity(r), identity(original), "result of a concurrent replay") }
                try expectEqual(try await store.streamVersion(s), 3, "version after 20 appends of one command")
                try expectEqual(
                    try await store.appendResult(forCommand: command).map(identity), identity(original),
                    "appendResult(forCommand:)")
            },

            ConformanceCheck("concurrent appends: a bad append rejects only itself") { store in
                let fx = Fixture()
                let taken = fx.event("Tested", 0)
                _ = try await store.append(
                    [taken], to: fx.stream("mixed", "taken"), expected: .noStream, commandID: nil)
                let reused = UUIDv7.next()
                let reusedEvents = [fx.event("Tested", 1)]
                _ = try await store.append(
                    reusedEvents, to: fx.stream("mixed", "reused"), expected: .noStream, commandID: reused)
                let head1 = try await store.headPosition()

                enum Kind: Int, Sendable, CaseIterable { case good, wrongVersion, takenID, idConflict, replay }
                struct Outcome: Sendable {
                    var kind: Kind
                    var stream: String
                    var ids: [UUID]
                    var result: AppendResult?
                    var error: EventStoreError?
                }
                let outcomes = try await withThrowingTaskGroup(of: Outcome.self) { group in
                    for i in 0..<50 {
                        let kind = Kind.allCases[i % Kind.allCases.count]
                        group.addTask {
                            // Replays go to the original stream, which is at version 1 already.
                            let stream = kind == .replay ? fx.stream("mixed", "reused") : fx.stream("mixed", "\(i)")
                            let good = fx.events(2, "Tested", from: i * 10)
                            let (events, expected, command): ([EventData], ExpectedVersion, UUID?) =
                                switch kind {
                                case .good: (good, .noStream, UUIDv7.next())
                                case .wrongVersion: (good, .exact(7), nil)
                                case .takenID:
                                    (
                                        [good[0], EventData(id: taken.id, type: taken.type, data: taken.data)],
                                        .noStream, nil
                                    )
                                case .idConflict: (good, .noStream, reused)
                                case .replay: (reusedEvents, .noStream, reused)
                                }
                            do {
                                let r = try await store.append(
                                    events, to: stream, expected: expected, commandID: command)
                                return Outcome(kind: kind, stream: stream, ids: events.map(\.id), result: r)
                            } catch let error as EventStoreError {
                                return Outcome(kind: kind, stream: stream, ids: events.map(\.id), error: error)
                            }
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                var stored: [UUID] = []
                for o in outcomes {
                    let what = "\(o.kind) append to \(o.stream)"
                    switch o.kind {
                    case .good:
                        try expect(o.error == nil, "\(what): expected success, actual \(String(describing: o.error))")
                        try expectEqual(o.result?.lastVersion, 2, "\(what): version")
                        stored += o.ids
                    case .wrongVersion:
                        try expectEqual(
                            o.error, .wrongExpectedVersion(stream: o.stream, expected: .exact(7), actual: 0), what)
                    case .takenID:
                        guard case .invalidInput? = o.error else {
                            throw failure(
                                "\(what): expected invalidInput, actual \(String(describing: o.error))", #fileID, #line)
                        }
                    case .idConflict:
                        guard case .idempotencyConflict(let id, _)? = o.error, id == reused else {
                            throw failure(
                                "\(what): expected idempotencyConflict(commandID: \(reused)), actual result \(String(describing: o.result)), error \(String(describing: o.error))",
                                #fileID, #line)
                        }
                    case .replay:
                        try expectEqual(o.result?.isDuplicate, true, "\(what): isDuplicate")
                        try expectEqual(o.result?.stream, fx.stream("mixed", "reused"), "\(what): the original stream")
                    }
                    if o.kind != .good {
                        let unchanged: Int64 = o.kind == .replay ? 1 : 0
                        try expectEqual(
                            try await store.streamVersion(o.stream), unchanged, "\(what): version of the stream")
                    }
                }
                let log = try await readAllEvents(store, after: head1)
                try expectEqual(Set(log.map(\.id)), Set(stored), "events stored by the concurrent appends")
                try expectEqual(log.count, stored.count, "events stored by the concurrent appends (count)")
            },

            ConformanceCheck("a reader tailing the log during writes misses nothing") { store in
                let fx = Fixture()
                let head0 = try await store.headPosition()
                let writers = 8
                let appendsPerWriter = 40
                let done = DoneFlag()
                let (seen, written) = try await withThrowingTaskGroup(of: ([RecordedEvent], [UUID]).self) { group in
                    group.addTask {
                        var seen: [RecordedEvent] = []
                        var checkpoint = head0
                        while true {
                            let finished = done.isSet
                            let page = try await store.readAll(
                                after: checkpoint, limit: pageSize(store, 50), filter: .all)
                            for e in page {
                                try expect(
                                    e.logPosition > checkpoint,
                                    "tailing reader got \(e.logPosition) after checkpoint \(checkpoint)")
                                checkpoint = e.logPosition
                            }
                            seen += page
                            if page.isEmpty {
                                if finished { return (seen, []) }
                                try await Task.sleep(for: .milliseconds(1))  // poll interval
                            }
                        }
                    }
                    group.addTask {
                        defer { done.set() }
                        return try await withThrowingTaskGroup(of: [UUID].self) { inner in
                            for w in 0..<writers {
                                inner.addTask {
                                    var ids: [UUID] = []
                                    for j in 0..<appendsPerWriter {
                                        let events = fx.events(1 + j % 2, "Tested", from: j)
                                        _ = try await store.append(
                                            events, to: fx.stream("tail", "\(w)"), expected: .any, commandID: nil)
                                        ids += events.map(\.id)
                                    }
                                    return ids
                                }
                            }
                            return ([], try await inner.reduce(into: []) { $0 += $1 })
                        }
                    }
                    return try await group.reduce(into: ([RecordedEvent](), [UUID]())) {
                        $0.0 += $1.0
                        $0.1 += $1.1
                    }
                }
                let ids = seen.map(\.id)
                try expectEqual(
                    ids.count, Set(ids).count, "events seen twice by the tailing reader: \(ids.count - Set(ids).count)")
                let missing = Set(written).subtracting(ids)
                try expect(missing.isEmpty, "the tailing reader missed \(missing.count) of \(written.count) events")
                try expectEqual(ids.count, written.count, "events seen by the tailing reader")
            },
        ]
    }
}

/// A flag set once, read from other tasks.
private final class DoneFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .acquiring) }
    func set() { flag.store(true, ordering: .releasing) }
}

/// A valid JSON document of exactly `bytes` bytes (at least 8).
private func payload(bytes: Int) -> Data {
    let overhead = #"{"p":""}"#.utf8.count
    return Data((#"{"p":""# + String(repeating: "x", count: max(0, bytes - overhead)) + #""}"#).utf8)
}
