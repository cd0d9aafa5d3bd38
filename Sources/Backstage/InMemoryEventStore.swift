import Foundation
import Synchronization

/// An event store that keeps everything in memory: for tests, prototypes and benchmarks of the
/// framework itself. It has the same semantics as the durable stores; stream ids compare byte for
/// byte, as in SQLite and PostgreSQL.
public final class InMemoryEventStore: EventStore {
    private struct StoredCommand {
        var fingerprint: String
        var result: AppendResult
    }
    private struct State {
        var events: [RecordedEvent] = []
        var streams: [ExactString: [Int]] = [:]
        var commands: [UUID: StoredCommand] = [:]
        var snapshots: [ExactString: Snapshot] = [:]
        var eventIDs = EventIDIndex()
    }
    private let state = Mutex(State())
    private let notifier = AppendNotifier()
    /// The limits this store enforces.
    public let limits: StoreLimits
    /// In-memory checkpoints and parked events, kept as long as the store, and single-process
    /// leadership: a new ``PipelineService`` over the same store resumes where the last stopped.
    /// It evaluates ``EventFilter/partition``: partitioned subscriptions run all their partitions
    /// in the one process.
    public let pipelineDefaults: PipelineDefaults = {
        var defaults = PipelineDefaults.inMemory()
        defaults.supportsPartitions = true
        return defaults
    }()

    /// Creates an empty store.
    public init(limits: StoreLimits = StoreLimits()) {
        self.limits = limits
    }

    public func append(
        _ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?
    ) async throws -> AppendResult {
        try limits.validate(append: events, to: stream)
        let fingerprint = commandID == nil ? "" : appendFingerprint(events)
        let result = try state.withLock { s throws(EventStoreError) -> AppendResult in
            if let commandID, let stored = s.commands[commandID] {
                guard stored.fingerprint == fingerprint else {
                    throw .idempotencyConflict(commandID: commandID, stream: stored.result.stream)
                }
                var original = stored.result
                original.isDuplicate = true
                original.recordedAt = nil
                return original
            }
            let key = ExactString(stream)
            // One hash of the stream id per append: its index entry is found (or made) once.
            let streamIndex = s.streams.index(forKey: key)
            let actual = Int64(streamIndex.map { s.streams.values[$0].count } ?? 0)
            guard expected.accepts(actual) else {
                throw .wrongExpectedVersion(stream: stream, expected: expected, actual: actual)
            }
            if events.count == 1 {
                // Checked and recorded in one lookup; nothing else is written before this point.
                guard s.eventIDs.insert(events[0].id) else {
                    throw .invalidInput("event id \(events[0].id) is already stored")
                }
            } else {
                for e in events where s.eventIDs.contains(e.id) {
                    throw .invalidInput("event id \(e.id) is already stored")
                }
                for e in events { s.eventIDs.insert(e.id) }
            }
            let now = Date()
            var version = actual
            let firstPosition = Int64(s.events.count + 1)
            let positions = s.events.count..<(s.events.count + events.count)
            // In place: copying the stream's index out and back would cost O(stream length).
            if let streamIndex {
                s.streams.values[streamIndex].append(contentsOf: positions)
            } else {
                s.streams[key] = Array(positions)
            }
            for e in events {
                version += 1
                s.events.append(
                    RecordedEvent(
                        position: Int64(s.events.count + 1), stream: stream, streamVersion: version,
                        id: e.id, type: e.type, schemaVersion: e.schemaVersion, data: e.data,
                        metadata: e.metadata, recordedAt: now))
            }
            let result = AppendResult(
                stream: stream, firstVersion: actual + 1, lastVersion: version,
                firstPosition: firstPosition, lastPosition: Int64(s.events.count), recordedAt: now)
            if let commandID { s.commands[commandID] = StoredCommand(fingerprint: fingerprint, result: result) }
            return result
        }
        if !result.isDuplicate { notifier.notify() }
        return result
    }

    public func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws -> [RecordedEvent] {
        try limits.validate(stream: stream)
        try limits.validate(pageSize: limit)
        return state.withLock { s in
            guard let indices = s.streams[ExactString(stream)], !indices.isEmpty else { return [] }
            switch direction {
            case .forward:
                let start = max(version, 1)
                guard start <= Int64(indices.count) else { return [] }
                let end = min(Int64(indices.count), start + Int64(limit) - 1)
                return (start...end).map { s.events[indices[Int($0 - 1)]] }
            case .backward:
                let start = min(version, Int64(indices.count))
                guard start >= 1 else { return [] }
                let end = max(1, start - Int64(limit) + 1)
                return stride(from: start, through: end, by: -1).map { s.events[indices[Int($0 - 1)]] }
            }
        }
    }

    public func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws
        -> [RecordedEvent]
    {
        try limits.validate(pageSize: limit)
        return state.withLock { s in
            var page: [RecordedEvent] = []
            var index = Int(max(position.position, 0))
            while index < s.events.count, page.count < limit {
                let e = s.events[index]
                if filter.matches(type: e.type, stream: e.stream) { page.append(e) }
                index += 1
            }
            return page
        }
    }

    public func streamVersion(_ stream: String) async throws -> Int64 {
        try limits.validate(stream: stream)
        return state.withLock { Int64($0.streams[ExactString(stream)]?.count ?? 0) }
    }

    public func headPosition() async throws -> LogPosition {
        state.withLock { LogPosition(position: Int64($0.events.count)) }
    }

    public func appendResult(forCommand commandID: UUID) async throws -> AppendResult? {
        state.withLock { s in
            guard var result = s.commands[commandID]?.result else { return nil }
            result.isDuplicate = true
            result.recordedAt = nil
            return result
        }
    }

    public func saveSnapshot(_ snapshot: Snapshot) async throws {
        try limits.validate(stream: snapshot.stream)
        state.withLock { s in
            if let old = s.snapshots[ExactString(snapshot.stream)], old.schemaVersion == snapshot.schemaVersion,
                old.version > snapshot.version
            {
                return
            }
            s.snapshots[ExactString(snapshot.stream)] = snapshot
        }
    }

    public func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        state.withLock { s in
            guard let snap = s.snapshots[ExactString(stream)], snap.schemaVersion == schemaVersion else { return nil }
            return snap
        }
    }

    public func appendNotifications() -> AsyncStream<Void> { notifier.stream() }
}

/// The ids of the stored events, to reject a second event with an id already stored.
///
/// Ids made by ``UUIDv7`` in this process mostly arrive in ascending order: those are appended to
/// a sorted array, without hashing, and without rehashing the whole index as it grows (a `Set`
/// of every id was the costliest part of an append). An id below the largest one is looked up
/// there by binary search and, when new, kept in a set.
struct EventIDIndex {
    /// A UUID ordered by its bytes.
    struct Key: Hashable, Comparable {
        let high: UInt64
        let low: UInt64

        init(_ id: UUID) {
            (high, low) = withUnsafeBytes(of: id.uuid) { raw in
                (
                    UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                    UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                )
            }
        }

        static func < (a: Key, b: Key) -> Bool { a.high != b.high ? a.high < b.high : a.low < b.low }
    }

    /// Ascending; its last element is the largest id stored.
    private var ascending: [Key] = []
    /// The ids stored when they were below the largest one.
    private var others: Set<Key> = []

    func contains(_ id: UUID) -> Bool { contains(Key(id)) }

    private func contains(_ key: Key) -> Bool {
        guard let last = ascending.last, !(last < key) else { return false }
        if others.contains(key) { return true }
        var low = 0
        var high = ascending.count
        while low < high {
            let middle = (low + high) / 2
            if ascending[middle] < key { low = middle + 1 } else { high = middle }
        }
        return low < ascending.count && ascending[low] == key
    }

    /// Records `id`; false when it is stored already.
    @discardableResult
    mutating func insert(_ id: UUID) -> Bool {
        let key = Key(id)
        if let last = ascending.last, !(last < key) {
            if contains(key) { return false }
            others.insert(key)
        } else {
            ascending.append(key)
        }
        return true
    }
}

/// Fans a "new events" hint out to every listener. Each listener's stream keeps at most one
/// pending hint, so a slow listener never makes memory grow.
package final class AppendNotifier: Sendable {
    private let continuations = Mutex<[UUID: AsyncStream<Void>.Continuation]>([:])
    /// How many listeners there are: an append with nobody listening takes no lock here.
    private let listeners = Atomic<Int>(0)

    /// Creates a notifier with no listeners.
    package init() {}

    /// A new listener's stream of hints; it ends when the listener stops iterating.
    package func stream() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = UUID()
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            self.continuations.withLock {
                if $0.removeValue(forKey: id) != nil { self.listeners.subtract(1, ordering: .relaxed) }
            }
        }
        continuations.withLock {
            $0[id] = continuation
            listeners.add(1, ordering: .relaxed)
        }
        return stream
    }

    /// Wakes every listener.
    package func notify() {
        // A listener that registers after this load is told of this append by its own first
        // read (hints are only wake-ups; readers poll), so skipping the lock here loses nothing.
        guard listeners.load(ordering: .relaxed) > 0 else { return }
        let all = continuations.withLock { Array($0.values) }
        for c in all { c.yield() }
    }
}
