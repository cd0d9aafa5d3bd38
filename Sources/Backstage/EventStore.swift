import Foundation

/// An append-only log of events, per stream and globally ordered.
///
/// Every backend (``InMemoryEventStore``, `SQLiteEventStore`, `PostgresEventStore`) passes the
/// same conformance suite:
/// - appends are atomic per call and checked against an ``ExpectedVersion``;
/// - an append carrying a command id that is already stored returns the original result and
///   writes nothing; the same id with different events is ``EventStoreError/idempotencyConflict(commandID:stream:)``;
/// - a reader that resumes from a ``LogPosition`` never misses an event and never sees one twice;
/// - bad input is rejected with ``EventStoreError/invalidInput(_:)`` before anything is written.
public protocol EventStore: Sendable {
    /// The limits this store enforces.
    var limits: StoreLimits { get }

    /// Appends `events` to `stream` atomically, if the stream is at `expected`.
    ///
    /// - Parameters:
    ///   - events: the events, in order (at most ``StoreLimits/maxEventsPerAppend``).
    ///   - stream: the stream, `category-id` by convention.
    ///   - expected: the version the stream must be at, or a weaker condition.
    ///   - commandID: makes the append idempotent: a second append with the same id and the same
    ///     events returns the first result (with ``AppendResult/isDuplicate`` set) and writes nothing.
    /// - Throws: ``EventStoreError``.
    func append(
        _ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?
    ) async throws -> AppendResult

    /// Reads up to `limit` events of one stream, starting at stream version `from` (inclusive),
    /// forward (ascending versions) or backward (descending versions).
    func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws -> [RecordedEvent]

    /// Reads up to `limit` events of the global log that come after `position`, in log order,
    /// keeping only those that match `filter` (the filter runs in the database).
    func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws
        -> [RecordedEvent]

    /// The current version of `stream` (the number of events in it), 0 when it has none.
    func streamVersion(_ stream: String) async throws -> Int64

    /// The position of the last event a reader can see now; ``LogPosition/start`` when empty.
    func headPosition() async throws -> LogPosition

    /// The result of the append stored with `commandID`, if any.
    func appendResult(forCommand commandID: UUID) async throws -> AppendResult?

    /// Stores a snapshot, replacing an older one of the same stream.
    func saveSnapshot(_ snapshot: Snapshot) async throws

    /// The latest snapshot of `stream` with the given schema version, if any.
    func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot?

    /// Hints that new events may be readable; each element is a wake-up, not a guarantee.
    /// Readers must still poll: a hint can be lost.
    func appendNotifications() -> AsyncStream<Void>

    /// The checkpoints, parked events and leadership a ``PipelineService`` over this store uses
    /// unless given others: durable ones, in the store's database, for a durable store. Read once
    /// per service. Defaults to ``PipelineDefaults/inMemory()`` (see ``PipelineDefaults``).
    var pipelineDefaults: PipelineDefaults { get }
}

/// The version a stream must be at for an append to succeed.
public enum ExpectedVersion: Sendable, Hashable, CustomStringConvertible {
    /// Any version, including no stream.
    case any
    /// The stream must not exist yet.
    case noStream
    /// The stream must have at least one event.
    case streamExists
    /// The stream must be exactly at this version (0 means no stream).
    case exact(Int64)

    /// Whether a stream at `actual` satisfies this expectation.
    package func accepts(_ actual: Int64) -> Bool {
        switch self {
        case .any: true
        case .noStream: actual == 0
        case .streamExists: actual > 0
        case .exact(let v): actual == v
        }
    }

    public var description: String {
        switch self {
        case .any: "any"
        case .noStream: "no stream"
        case .streamExists: "stream exists"
        case .exact(let v): "version \(v)"
        }
    }
}

/// Direction of a stream read.
public enum ReadDirection: Sendable, Hashable {
    /// Ascending stream versions.
    case forward
    /// Descending stream versions.
    case backward
}

/// A point in the global log. Readers resume after it.
///
/// `transaction` is the writing transaction's id where the backend orders by it (PostgreSQL);
/// it is 0 for backends with a single writer. Positions order by transaction, then position.
public struct LogPosition: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// The writing transaction's id (0 where the backend has a single writer).
    public var transaction: UInt64
    /// The global position of the event.
    public var position: Int64

    /// Creates a position.
    public init(transaction: UInt64 = 0, position: Int64) {
        self.transaction = transaction
        self.position = position
    }

    /// Before the first event.
    public static let start = LogPosition(transaction: 0, position: 0)

    public static func < (a: LogPosition, b: LogPosition) -> Bool {
        (a.transaction, a.position) < (b.transaction, b.position)
    }

    public var description: String {
        transaction == 0 ? "\(position)" : "\(transaction):\(position)"
    }
}

/// Which events of the global log a reader wants; evaluated in the database.
public struct EventFilter: Sendable, Hashable {
    /// Only events with one of these type names (nil: all types).
    public var types: Set<String>?
    /// Only events whose stream is in one of these categories (nil: all categories).
    public var categories: Set<String>?
    /// Only the events of one partition of a partitioned subscription (nil: every partition).
    /// Set by the pipelines; a store that evaluates it says so in
    /// ``PipelineDefaults/supportsPartitions``.
    public var partition: EventPartition?

    /// Creates a filter.
    public init(types: Set<String>? = nil, categories: Set<String>? = nil, partition: EventPartition? = nil) {
        self.types = types
        self.categories = categories
        self.partition = partition
    }

    /// Every event.
    public static let all = EventFilter()

    /// Whether `event` passes the filter.
    ///
    /// Names compare byte for byte (UTF-8), as in the databases: `café` spelled with a combining
    /// accent (NFD) is not `café` spelled with a precomposed one (NFC). A `Set<String>` holds one
    /// spelling of canonically equivalent names, so a filter matches that spelling only.
    package func matches(type: String, stream: String) -> Bool {
        if let types, !Self.containsExactly(types, type) { return false }
        if let categories, !Self.containsExactly(categories, streamCategory(stream)) { return false }
        if let partition, !partition.contains(stream: stream) { return false }
        return true
    }

    private static func containsExactly(_ set: Set<String>, _ value: String) -> Bool {
        guard let index = set.firstIndex(of: value) else { return false }
        return set[index].utf8.elementsEqual(value.utf8)
    }
}

/// The category of a stream: the part of its id before the first `-` byte (the whole id when none).
///
/// The split is on the UTF-8 byte of `-`, not on a `Character`: a `-` followed by a combining
/// mark still ends the category, as it does in the databases.
package func streamCategory(_ stream: String) -> String {
    if let dash = stream.utf8.firstIndex(of: UInt8(ascii: "-")) {
        return String(decoding: stream.utf8[..<dash], as: UTF8.self)
    }
    return stream
}

/// A string that compares and hashes by its UTF-8 bytes, not by Swift's canonical equivalence:
/// the identity rule of every store and cache (SQLite and PostgreSQL compare bytes too).
struct ExactString: Hashable, Sendable {
    let value: String

    init(_ value: String) { self.value = value }

    static func == (a: ExactString, b: ExactString) -> Bool {
        // Over the contiguous bytes: iterating the UTF-8 views was a hot spot of every append
        // and every aggregate cache lookup.
        var a = a.value
        var b = b.value
        return a.withUTF8 { x in
            b.withUTF8 { y in x.count == y.count && (x.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0)
            }
        }
    }

    func hash(into hasher: inout Hasher) {
        var copy = value
        copy.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

/// An event to append: type name, schema version, JSON data and metadata.
public struct EventData: Sendable, Hashable {
    /// Unique id (time-ordered, see ``UUIDv7``).
    public var id: UUID
    /// The stable type name.
    public var type: String
    /// The schema version of `data`.
    public var schemaVersion: Int
    /// The JSON payload.
    public var data: Data
    /// Where the event came from.
    public var metadata: EventMetadata

    /// Creates an event to append.
    public init(
        id: UUID = UUIDv7.next(), type: String, schemaVersion: Int = 1, data: Data,
        metadata: EventMetadata = EventMetadata()
    ) {
        self.id = id
        self.type = type
        self.schemaVersion = schemaVersion
        self.data = data
        self.metadata = metadata
    }
}

/// An event as stored in the log.
public struct RecordedEvent: Sendable, Hashable {
    /// Position in the global log.
    public var position: Int64
    /// The writing transaction's id (0 where the backend has a single writer).
    public var transaction: UInt64
    /// The stream the event belongs to.
    public var stream: String
    /// The event's version in its stream (the first event is 1).
    public var streamVersion: Int64
    /// Unique id.
    public var id: UUID
    /// The stable type name.
    public var type: String
    /// The schema version of `data`.
    public var schemaVersion: Int
    /// The JSON payload.
    public var data: Data
    /// Where the event came from.
    public var metadata: EventMetadata
    /// When the event was stored.
    public var recordedAt: Date

    /// Creates a recorded event (stores use this).
    public init(
        position: Int64, transaction: UInt64 = 0, stream: String, streamVersion: Int64, id: UUID,
        type: String, schemaVersion: Int, data: Data, metadata: EventMetadata, recordedAt: Date
    ) {
        self.position = position
        self.transaction = transaction
        self.stream = stream
        self.streamVersion = streamVersion
        self.id = id
        self.type = type
        self.schemaVersion = schemaVersion
        self.data = data
        self.metadata = metadata
        self.recordedAt = recordedAt
    }

    /// Where a reader resumes after this event.
    public var logPosition: LogPosition { LogPosition(transaction: transaction, position: position) }

    /// The stream's category.
    public var category: String { streamCategory(stream) }
}

/// What an append stored.
public struct AppendResult: Sendable, Hashable {
    /// The stream appended to.
    public var stream: String
    /// The stream version of the first appended event.
    public var firstVersion: Int64
    /// The stream's version after the append (the version of the last appended event).
    public var lastVersion: Int64
    /// Global position of the first appended event.
    public var firstPosition: Int64
    /// Global position of the last appended event.
    public var lastPosition: Int64
    /// The writing transaction's id (0 where the backend has a single writer).
    public var transaction: UInt64
    /// True when this result is the one stored earlier for the same command id: nothing was written.
    public var isDuplicate: Bool
    /// When the events were stored: the `recordedAt` written to their rows, if the store knows it
    /// without reading them back (nil otherwise, and for duplicates).
    public var recordedAt: Date?

    /// Creates a result (stores use this).
    public init(
        stream: String, firstVersion: Int64, lastVersion: Int64, firstPosition: Int64,
        lastPosition: Int64, transaction: UInt64 = 0, isDuplicate: Bool = false, recordedAt: Date? = nil
    ) {
        self.stream = stream
        self.firstVersion = firstVersion
        self.lastVersion = lastVersion
        self.firstPosition = firstPosition
        self.lastPosition = lastPosition
        self.transaction = transaction
        self.isDuplicate = isDuplicate
        self.recordedAt = recordedAt
    }

    /// Where a reader resumes after the last appended event.
    public var lastLogPosition: LogPosition {
        LogPosition(transaction: transaction, position: lastPosition)
    }
}

/// A stored copy of an aggregate's state at a stream version.
public struct Snapshot: Sendable, Hashable {
    /// The stream the state was built from.
    public var stream: String
    /// The stream version the state includes.
    public var version: Int64
    /// The version of the state's shape.
    public var schemaVersion: Int
    /// The encoded state (JSON).
    public var data: Data
    /// When the snapshot was taken.
    public var recordedAt: Date

    /// Creates a snapshot.
    public init(stream: String, version: Int64, schemaVersion: Int, data: Data, recordedAt: Date = Date()) {
        self.stream = stream
        self.version = version
        self.schemaVersion = schemaVersion
        self.data = data
        self.recordedAt = recordedAt
    }
}

/// Errors of every event store.
public enum EventStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The stream was not at the expected version; nothing was written.
    case wrongExpectedVersion(stream: String, expected: ExpectedVersion, actual: Int64)
    /// The command id was already stored with different events, for another stream, or (through
    /// ``BackstageApp``) for a different command; nothing was written. `stream` is the stream the
    /// id was first stored with.
    case idempotencyConflict(commandID: UUID, stream: String)
    /// The input broke a limit or rule; nothing was written.
    case invalidInput(String)

    public var description: String {
        switch self {
        case .wrongExpectedVersion(let stream, let expected, let actual):
            "wrong expected version for stream '\(stream)': expected \(expected), actual version \(actual)"
        case .idempotencyConflict(let id, let stream):
            "command \(id) was already appended to stream '\(stream)' with different events or by a different command"
        case .invalidInput(let reason):
            "invalid input: \(reason)"
        }
    }
}

/// Limits that reject bad input before it reaches the database.
public struct StoreLimits: Sendable, Hashable {
    /// Largest `data` of one event, in bytes.
    public var maxPayloadBytes: Int
    /// Most events in one append.
    public var maxEventsPerAppend: Int
    /// Longest stream id, in UTF-8 bytes.
    public var maxStreamIDBytes: Int
    /// Largest page a read may ask for.
    public var maxPageSize: Int
    /// Longest event type name, in UTF-8 bytes.
    public var maxTypeNameBytes: Int
    /// Largest metadata fields of one event: the UTF-8 bytes of every key and value together.
    public var maxMetadataBytes: Int
    /// Largest append: the `data` bytes of all its events together.
    public var maxAppendBytes: Int

    /// Creates limits; the defaults suit most applications.
    public init(
        maxPayloadBytes: Int = 1 << 20, maxEventsPerAppend: Int = 1_000, maxStreamIDBytes: Int = 256,
        maxPageSize: Int = 10_000, maxTypeNameBytes: Int = 256, maxMetadataBytes: Int = 64 << 10,
        maxAppendBytes: Int = 16 << 20
    ) {
        self.maxPayloadBytes = maxPayloadBytes
        self.maxEventsPerAppend = maxEventsPerAppend
        self.maxStreamIDBytes = maxStreamIDBytes
        self.maxPageSize = maxPageSize
        self.maxTypeNameBytes = maxTypeNameBytes
        self.maxMetadataBytes = maxMetadataBytes
        self.maxAppendBytes = maxAppendBytes
    }

    /// Checks a stream id: non-empty, at most ``maxStreamIDBytes``, no NUL.
    package func validate(stream: String) throws(EventStoreError) {
        if stream.isEmpty { throw .invalidInput("stream id is empty") }
        if stream.utf8.count > maxStreamIDBytes {
            throw .invalidInput(
                "stream id is \(stream.utf8.count) bytes long; the limit is \(maxStreamIDBytes)")
        }
        if hasNUL(stream) { throw .invalidInput("stream id contains a NUL character") }
    }

    /// Checks an append before anything is written.
    package func validate(append events: [EventData], to stream: String) throws(EventStoreError) {
        try validate(stream: stream)
        if events.isEmpty { throw .invalidInput("an append needs at least one event") }
        if events.count > maxEventsPerAppend {
            throw .invalidInput(
                "\(events.count) events in one append; the limit is \(maxEventsPerAppend)")
        }
        var ids = Set<UUID>()
        var totalBytes = 0
        for event in events {
            if event.type.isEmpty { throw .invalidInput("event type name is empty") }
            if event.type.utf8.count > maxTypeNameBytes || hasNUL(event.type) {
                throw .invalidInput("event type name '\(event.type.prefix(40))' is too long or has NUL")
            }
            if event.data.count > maxPayloadBytes {
                throw .invalidInput(
                    "event \(event.type) has a \(event.data.count)-byte payload; the limit is \(maxPayloadBytes)")
            }
            if events.count > 1, !ids.insert(event.id).inserted {
                throw .invalidInput("event id \(event.id) appears twice in one append")
            }
            totalBytes += event.data.count
            try validate(metadata: event.metadata, of: event.type)
        }
        if totalBytes > maxAppendBytes {
            throw .invalidInput(
                "the events of one append carry \(totalBytes) bytes of data; the limit is \(maxAppendBytes)")
        }
    }

    /// Checks the metadata fields of one event: no NUL in a key or value (PostgreSQL's `jsonb`
    /// cannot store it), at most ``maxMetadataBytes`` of keys and values together.
    package func validate(metadata: EventMetadata, of type: String) throws(EventStoreError) {
        var bytes = 0
        for (key, value) in metadata.fields {
            if hasNUL(key) || hasNUL(value) {
                throw .invalidInput("a metadata field of \(type.prefix(40)) has NUL in its key or value")
            }
            bytes += key.utf8.count + value.utf8.count
        }
        if bytes > maxMetadataBytes {
            throw .invalidInput(
                "the metadata fields of \(type.prefix(40)) are \(bytes) bytes; the limit is \(maxMetadataBytes)")
        }
    }

    /// Checks a page size.
    package func validate(pageSize: Int) throws(EventStoreError) {
        if pageSize < 1 || pageSize > maxPageSize {
            throw .invalidInput("page size \(pageSize) is outside 1...\(maxPageSize)")
        }
    }
}

/// Whether `string` contains a NUL byte: a scan of its contiguous bytes (the generic `contains`
/// over the UTF-8 view was a hot spot of every dispatch and append).
private func hasNUL(_ string: String) -> Bool {
    string.utf8.withContiguousStorageIfAvailable { $0.contains(0) } ?? string.utf8.contains(0)
}

/// A digest of an append's events (type, schema version, data), used to tell a retried command
/// (same events) from a reused command id (different events). Event ids are left out: a retry
/// may carry fresh ids. The data is hashed as given, so it must be encoded deterministically:
/// ``EventCodec`` sorts JSON keys for this reason.
package func appendFingerprint(_ events: [EventData]) -> String {
    var hasher = FNV1a()
    for e in events {
        hasher.add(e.type)
        hasher.add(String(e.schemaVersion))
        hasher.add(e.data)
    }
    return "\(events.count):\(String(hasher.value, radix: 16))"
}

struct FNV1a {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ bytes: some Sequence<UInt8>) {
        for b in bytes {
            value ^= UInt64(b)
            value &*= 0x0000_0100_0000_01B3
        }
        value ^= 0xff
        value &*= 0x0000_0100_0000_01B3
    }
    mutating func add(_ s: String) { add(s.utf8) }
    /// The same digest as the generic `add`, over the contiguous bytes (iterating `Data` byte by
    /// byte through its `Sequence` conformance was the slowest part of an in-memory append).
    mutating func add(_ data: Data) {
        data.withUnsafeBytes { add(UnsafeRawBufferPointer($0)) }
    }
}
