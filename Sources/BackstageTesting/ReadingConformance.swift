import Backstage
import Foundation
import Synchronization

/// Checks of the streaming reads every store gets from core (`EventStore/events(after:filter:pageSize:mode:)`,
/// `EventStore/events(inStream:from:through:direction:pageSize:)`, `BackstageApp/streamHistory(_:id:from:through:)`
/// and the snapshot-based time travel of `BackstageApp`), run against every backend like
/// ``StoreConformance``.
public enum ReadingConformance {
    /// Every check, in a stable order.
    public static var checks: [ConformanceCheck] {
        [
            ConformanceCheck("the log read as a sequence equals readAll page by page", logEqualsPages),
            ConformanceCheck("following the log delivers concurrent appends in order, once, until cancelled", follow),
            ConformanceCheck("a stream reads forward and backward as a sequence", streamSequence),
            ConformanceCheck("time travel from a snapshot equals a replay and reads fewer events", timeTravel),
        ]
    }
}

// MARK: - Helpers

private func require(
    _ condition: Bool, _ message: @autoclosure () -> String, fileID: String = #fileID, line: Int = #line
) throws {
    if !condition { throw ConformanceFailure(message: message(), location: "\(fileID):\(line)") }
}

private func uniqueTag() -> String {
    var generator = SystemRandomNumberGenerator()
    let letters = Array("abcdefghijklmnopqrstuvwxyz")
    return String((0..<6).map { _ in letters[Int(generator.next() % UInt64(letters.count))] })
}

private func event(_ type: String, _ n: Int) -> EventData {
    EventData(type: type, data: Data(#"{"n":\#(n)}"#.utf8))
}

private func pages(_ store: any EventStore, after start: LogPosition, filter: EventFilter, pageSize: Int)
    async throws -> [RecordedEvent]
{
    var all: [RecordedEvent] = []
    var position = start
    while true {
        let page = try await store.readAll(after: position, limit: pageSize, filter: filter)
        all += page
        if let last = page.last { position = last.logPosition }
        if page.count < pageSize { return all }
    }
}

private func collect<S: AsyncSequence>(_ sequence: S) async throws -> [S.Element] {
    var all: [S.Element] = []
    for try await element in sequence { all.append(element) }
    return all
}

// MARK: - Log

private func logEqualsPages(_ store: any EventStore) async throws {
    let tag = uniqueTag()
    let baseline = try await store.headPosition()
    let typeA = "Alpha\(tag.capitalized)"
    let typeB = "Beta\(tag.capitalized)"
    for i in 0..<23 {
        let stream = "log\(tag)-\(i % 4)"
        let batch = (0..<(i % 3 + 1)).map { event($0 % 2 == 0 ? typeA : typeB, i * 10 + $0) }
        _ = try await store.append(batch, to: stream, expected: .any, commandID: nil)
    }
    _ = try await store.append([event(typeA, 999)], to: "other\(tag)-1", expected: .any, commandID: nil)
    let filters = [
        EventFilter(categories: ["log\(tag)", "other\(tag)"]), EventFilter(types: [typeB]),
        EventFilter(types: [typeA], categories: ["log\(tag)"]),
    ]
    for filter in filters {
        for pageSize in [1, 4, 7, 500] {
            let expected = try await pages(store, after: baseline, filter: filter, pageSize: pageSize)
            let read = try await collect(store.events(after: baseline, filter: filter, pageSize: pageSize))
            try require(
                read.map(\.id) == expected.map(\.id),
                "page size \(pageSize), \(filter): the sequence read \(read.count) events, readAll \(expected.count)")
            try require(read == expected, "page size \(pageSize): the sequence's events differ from readAll's")
            // From the middle of the log.
            if expected.count > 5 {
                let middle = expected[4].logPosition
                let rest = try await collect(store.events(after: middle, filter: filter, pageSize: pageSize))
                try require(
                    rest.map(\.id) == expected.dropFirst(5).map(\.id),
                    "page size \(pageSize): reading after \(middle) gave \(rest.count) events")
            }
        }
    }
    let all = try await collect(store.events(after: baseline))
    try require(all.count == 46, "the whole log after the baseline: expected 46 events, read \(all.count)")
    // A bad page size is the store's invalid input.
    do {
        _ = try await collect(store.events(after: baseline, pageSize: 0))
        try require(false, "page size 0 was accepted")
    } catch is EventStoreError {}
}

/// Collected events, shared between the following task and the check.
private final class Collected: Sendable {
    let events = Mutex<[RecordedEvent]>([])
    var count: Int { events.withLock { $0.count } }
}

private func follow(_ store: any EventStore) async throws {
    let tag = uniqueTag()
    let category = "follow\(tag)"
    let baseline = try await store.headPosition()
    let filter = EventFilter(categories: [category])
    let collected = Collected()
    let writerCount = 4
    let appendsPerWriter = 20
    func waitFor(_ count: Int, seconds: Double) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while collected.count < count, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
    }
    // The follower is the group's only child: cancelling the group cancels it, and the group
    // waits for it (a follower that ignores cancellation holds the check up until the test's
    // time limit; one that ends late fails the 20 s bound below).
    let expected = try await withThrowingTaskGroup(of: String?.self) { group in
        group.addTask {
            do {
                for try await event in store.events(
                    after: baseline, filter: filter, pageSize: 7, mode: .follow(pollInterval: .milliseconds(500)))
                {
                    collected.events.withLock { $0.append(event) }
                }
                return nil
            } catch is CancellationError {
                return nil
            } catch {
                return "the follower failed with \(error) instead of CancellationError"
            }
        }
        // The follower reaches the head before the writers start.
        _ = try await store.append([event("Started", 0)], to: "\(category)-start", expected: .any, commandID: nil)
        try await waitFor(1, seconds: 20)
        try require(collected.count == 1, "the follower did not deliver the first event within 20 s")
        try await withThrowingTaskGroup(of: Void.self) { writers in
            for w in 0..<writerCount {
                writers.addTask {
                    for i in 0..<appendsPerWriter {
                        let batch = (0..<(i % 3 + 1)).map { event("Written", w * 1000 + i * 10 + $0) }
                        _ = try await store.append(batch, to: "\(category)-\(w)", expected: .any, commandID: nil)
                    }
                }
            }
            try await writers.waitForAll()
        }
        let expected = try await pages(store, after: baseline, filter: filter, pageSize: 100)
        try await waitFor(expected.count, seconds: 30)
        // Nothing more arrives: wait a little past the count for a duplicate.
        try await Task.sleep(for: .milliseconds(200))
        let cancelled = ContinuousClock.now
        group.cancelAll()
        let failure = try await group.next() ?? nil
        try require(failure == nil, failure ?? "")
        try require(
            ContinuousClock.now - cancelled < .seconds(20),
            "the follower did not end with CancellationError within 20 s of its task's cancellation")
        return expected
    }
    let delivered = collected.events.withLock { $0 }
    try require(
        delivered.count == expected.count,
        "the follower delivered \(delivered.count) events, the log holds \(expected.count)")
    try require(delivered.map(\.id) == expected.map(\.id), "the follower's events differ from the log's order")
    try require(Set(delivered.map(\.id)).count == delivered.count, "the follower delivered an event twice")
    for w in 0..<writerCount {
        let versions = delivered.filter { $0.stream == "\(category)-\(w)" }.map(\.streamVersion)
        try require(versions == Array(1...Int64(versions.count)), "stream \(w) was delivered with a gap: \(versions)")
    }
}

// MARK: - Stream

private func streamSequence(_ store: any EventStore) async throws {
    let stream = "seq\(uniqueTag())-1"
    for size in [1, 3, 2, 5, 4, 1, 7] {
        _ = try await store.append((0..<size).map { event("Step", $0) }, to: stream, expected: .any, commandID: nil)
    }
    let all = try await store.readStream(stream, from: 1, direction: .forward, limit: 500)
    try require(all.count == 23, "the stream holds \(all.count) events, expected 23")
    for pageSize in [1, 4, 23, 500] {
        let forward = try await collect(store.events(inStream: stream, pageSize: pageSize))
        try require(forward == all, "forward, page size \(pageSize): read \(forward.count) events")
        let middle = try await collect(store.events(inStream: stream, from: 7, through: 15, pageSize: pageSize))
        try require(
            middle.map(\.streamVersion) == Array(7...15),
            "versions 7 through 15, page size \(pageSize): \(middle.map(\.streamVersion))")
        let backward = try await collect(store.events(inStream: stream, direction: .backward, pageSize: pageSize))
        try require(backward == all.reversed(), "backward, page size \(pageSize): read \(backward.count) events")
        let down = try await collect(
            store.events(inStream: stream, from: 10, through: 3, direction: .backward, pageSize: pageSize))
        try require(
            down.map(\.streamVersion) == Array((3...10).reversed()), "backward 10 to 3: \(down.map(\.streamVersion))")
    }
    let none = try await collect(store.events(inStream: "seq\(uniqueTag())-none"))
    try require(none.isEmpty, "a missing stream read \(none.count) events")
    let past = try await collect(store.events(inStream: stream, from: 24))
    try require(past.isEmpty, "reading after the end read \(past.count) events")
}

// MARK: - Time travel

private struct Tallied: Event {
    static let typeName = "ReadingTallied"
    var amount: Int
}

private enum TallyEvent: EventFamily {
    case tallied(Tallied)
    static let members: [EventMember<TallyEvent>] = [.init(Tallied.self, TallyEvent.tallied)]
}

private struct Tally: Aggregate, Codable, Equatable {
    typealias Event = TallyEvent
    static let category = "readingtally"
    var total = 0
    var count = 0
    var amounts: [Int] = []
    init() {}
    mutating func apply(_ event: TallyEvent) {
        switch event {
        case .tallied(let e):
            total += e.amount
            count += 1
            amounts.append(e.amount)
        }
    }
}

private struct AddToTally: Command {
    typealias Target = Tally
    var id: String
    var amount: Int
}

private func timeTravel(_ base: any EventStore) async throws {
    let store = RecordingEventStore(base)
    var router = Router()
    try router.route(AddToTally.self, id: \.id) { _, c in [.tallied(Tallied(amount: c.amount))] }
    var snapshotting = BackstageApp.Configuration()
    snapshotting.snapshotEvery = 10
    snapshotting.loadPageSize = 4
    var plain = BackstageApp.Configuration()
    plain.loadPageSize = 4
    let app = BackstageApp(store: store, router: router, middleware: [], configuration: snapshotting)
    let replayer = BackstageApp(store: store, router: router, middleware: [], configuration: plain)
    let id = uniqueTag()
    for n in 1...35 { try await app.dispatch(AddToTally(id: id, amount: n)) }
    let snapshot = try await store.loadSnapshot(Tally.streamID(id), schemaVersion: Tally.snapshotSchemaVersion)
    try require(
        snapshot?.version == 30, "expected the snapshot at version 30, found \(String(describing: snapshot?.version))")

    for version: Int64 in [33, 30, 35, 40] {
        let (fromSnapshot, read) = try await store.countingStreamReads {
            try await app.load(Tally.self, id: id, atVersion: version)
        }
        let (replayed, replayRead) = try await store.countingStreamReads {
            try await replayer.load(Tally.self, id: id, atVersion: version)
        }
        try require(
            fromSnapshot.state == replayed.state && fromSnapshot.version == replayed.version,
            "at version \(version): from the snapshot \(fromSnapshot.version)/\(fromSnapshot.state.total), replayed \(replayed.version)/\(replayed.state.total)"
        )
        try require(replayRead == Int(min(version, 35)), "a replay to \(version) read \(replayRead) events")
        try require(read == Int(min(version, 35)) - 30, "a load at \(version) from the snapshot read \(read) events")
    }
    // Below the snapshot: replayed from the start, and still right.
    let (early, earlyRead) = try await store.countingStreamReads {
        try await app.load(Tally.self, id: id, atVersion: 25)
    }
    try require(early.version == 25 && early.state.amounts == Array(1...25), "at version 25: \(early.state.amounts)")
    try require(earlyRead == 25, "a load at 25 read \(earlyRead) events")
    // The current state, from the snapshot.
    let (current, currentRead) = try await store.countingStreamReads { try await app.load(Tally.self, id: id) }
    try require(current.version == 35 && current.state.total == (1...35).reduce(0, +), "current: \(current.version)")
    try require(currentRead == 5, "the current state from the snapshot read \(currentRead) events")
    // By date: now is after every event and the snapshot.
    let (now, nowRead) = try await store.countingStreamReads { try await app.load(Tally.self, id: id, at: Date()) }
    try require(now.version == 35 && now.state == current.state, "at now: version \(now.version)")
    try require(nowRead <= 6, "a load at now from the snapshot read \(nowRead) events")
    // Before the snapshot: replayed from the start.
    let events = try await app.history(Tally.self, id: id)
    try require(events.count == 35, "history has \(events.count) events")
    let date = events[11].recorded.recordedAt
    let expected = events.prefix { $0.recorded.recordedAt <= date }.count
    let then = try await app.load(Tally.self, id: id, at: date)
    try require(
        then.version == Int64(expected), "at the 12th event's time: version \(then.version), expected \(expected)")
    // The streamed history from a version.
    let tail = try await collect(try app.streamHistory(Tally.self, id: id, from: 31))
    try require(tail.map(\.recorded.streamVersion) == Array(31...35), "history from 31: \(tail.count) events")
}
