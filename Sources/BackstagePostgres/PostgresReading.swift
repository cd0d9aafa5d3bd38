import Backstage
import Foundation
import PostgresNIO
import Synchronization

// The read path's plumbing: prepared statements whose SQL names the store's schema, a binary
// codec for transaction ids, and the decoding of event rows by position, without per-row text
// parsing or JSON re-encoding.

/// A transaction id (`xid8`) in PostgreSQL's binary format (8 bytes, big-endian), so neither the
/// server nor the reader converts it to text and back.
struct TransactionID: PostgresNonThrowingEncodable, PostgresDecodable, Sendable {
    var value: UInt64

    init(_ value: UInt64) { self.value = value }

    static var psqlType: PostgresDataType { .xid8 }
    static var psqlFormat: PostgresFormat { .binary }

    func encode<JSONEncoder: PostgresJSONEncoder>(
        into byteBuffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>
    ) {
        byteBuffer.writeInteger(value)
    }

    init<JSONDecoder: PostgresJSONDecoder>(
        from buffer: inout ByteBuffer, type: PostgresDataType, format: PostgresFormat,
        context: PostgresDecodingContext<JSONDecoder>
    ) throws {
        switch format {
        case .binary:
            guard type == .xid8 || type == .int8, buffer.readableBytes == 8,
                let value = buffer.readInteger(as: UInt64.self)
            else { throw PostgresDecodingError.Code.typeMismatch }
            self.value = value
        case .text:
            guard let text = buffer.readString(length: buffer.readableBytes), let value = UInt64(text) else {
                throw PostgresDecodingError.Code.failure
            }
            self.value = value
        }
    }
}

/// A statement that postgres-nio prepares once per connection and then only binds and executes
/// (no parsing or planning on the server, no row description sent back). postgres-nio wants the
/// name and SQL of a `PostgresPreparedStatement` as static properties, read when the statement is
/// executed; the store's SQL names its schema, known only at run time, so they come from a task
/// local set around the call (``PostgresConnection/executePrepared(_:binds:logger:)``).
struct PreparedStoreStatement: PostgresPreparedStatement {
    /// The name and SQL of the statement being executed.
    @TaskLocal static var current: (name: String, sql: String) = ("", "")

    static var name: String { current.name }
    static var sql: String { current.sql }

    typealias Row = PostgresRow

    let bindings: PostgresBindings

    func makeBindings() -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) -> PostgresRow { row }

    /// Bumped when a prepared statement fails on the server: postgres-nio keeps the failure of a
    /// preparation for the connection's lifetime (a read before its schema existed would fail on
    /// that connection forever), so the statements are prepared again under new names.
    static let generation = Atomic<Int>(0)

    /// The statement's name: a hash of its SQL (names longer than 63 bytes would be truncated by
    /// the server and could collide) and the generation.
    static func name(for sql: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in sql.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "backstage_\(String(repeating: "0", count: 16 - hex.count))\(hex)_\(generation.load(ordering: .relaxed))"
    }
}

extension PostgresConnection {
    /// Executes `sql` (with `$n` placeholders for `binds`) as a statement prepared on this
    /// connection, preparing it on first use.
    func executePrepared(_ sql: String, binds: PostgresBindings, logger: Logger) async throws
        -> AsyncThrowingMapSequence<PostgresRowSequence, PostgresRow>
    {
        do {
            return try await PreparedStoreStatement.$current.withValue((PreparedStoreStatement.name(for: sql), sql)) {
                try await self.execute(PreparedStoreStatement(bindings: binds), logger: logger)
            }
        } catch let error as PSQLError where error.code == .server && Self.mayHaveFailedPreparation(error) {
            PreparedStoreStatement.generation.add(1, ordering: .relaxed)
            throw error
        }
    }

    /// Whether `error` may come from preparing the statement, which postgres-nio then keeps
    /// failing for the connection's lifetime. Only parsing and binding errors reach here (an
    /// error of running the statement comes while its rows are read), and a preparation can fail
    /// for many reasons (a missing table, a timeout, an aborted transaction); a data error
    /// (class 22, such as a parameter that is not valid jsonb) comes from binding the values and
    /// leaves the statement prepared.
    static func mayHaveFailedPreparation(_ error: PSQLError) -> Bool {
        error.sqlState.map { !$0.hasPrefix("22") } ?? true
    }
}

extension PostgresEventStore {
    /// Decodes the event in columns 0..<13 of `row` (selected as ``eventColumns``), by position.
    /// Column by column, the same code as parked events' rows (postgres-nio's decoding into a tuple of
    /// 13 types measured no faster here).
    static func decodeEvent(_ row: PostgresRow) throws -> RecordedEvent {
        try decodeEvent(row.makeRandomAccess())
    }

    /// Decodes the event in columns 0..<13 of `row` (selected as ``eventColumns``).
    static func decodeEvent(_ row: PostgresRandomAccessRow) throws -> RecordedEvent {
        RecordedEvent(
            position: try row[0].decode(Int64.self),
            transaction: try row[1].decode(TransactionID.self).value,
            stream: try row[2].decode(String.self),
            streamVersion: try row[3].decode(Int64.self),
            id: try row[4].decode(UUID.self),
            type: try row[5].decode(String.self),
            schemaVersion: Int(try row[6].decode(Int32.self)),
            data: try decodePayload(row[7].decode(ByteBuffer.self)),
            metadata: EventMetadata(
                commandID: try row[8].decode(UUID?.self), causationID: try row[9].decode(UUID?.self),
                correlationID: try row[10].decode(UUID?.self),
                fields: try decodeFields(row[11].decode(ByteBuffer?.self))),
            recordedAt: try row[12].decode(Date.self))
    }

    /// The events of `rows`, decoded by position.
    static func decodeEvents<Rows: AsyncSequence>(_ rows: Rows) async throws -> [RecordedEvent]
    where Rows.Element == PostgresRow {
        var events: [RecordedEvent] = []
        for try await row in rows { events.append(try decodeEvent(row)) }
        return events
    }

    /// The metadata fields column: a jsonb object of strings in binary format (format version 1,
    /// then the JSON text as PostgreSQL writes it), or NULL for none.
    static func decodeFields(_ buffer: ByteBuffer?) throws -> [String: String] {
        guard var buffer else { return [:] }
        guard let format = buffer.readInteger(as: UInt8.self) else { return [:] }
        if format == 1, let fields = buffer.withUnsafeReadableBytes({ FlatJSONObject.parse($0) }) {
            return fields
        }
        // Not the flat object of strings the store writes: the general decoder says why.
        if format != 1 {
            throw PostgresStoreError.unexpectedResult("the metadata fields have an unknown format")
        }
        return try JSONDecoder().decode([String: String].self, from: Data(buffer.readableBytesView))
    }
}

/// A parser for the JSON text of a flat object of strings, as PostgreSQL renders jsonb (`{"a": "b"}`):
/// one pass over the bytes, no intermediate values. Returns nil for anything else (the caller
/// falls back to `JSONDecoder`).
enum FlatJSONObject {
    static func parse(_ bytes: UnsafeRawBufferPointer) -> [String: String]? {
        var i = 0
        let n = bytes.count
        func skipSpace() {
            while i < n, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x09 || bytes[i] == 0x0D { i += 1 }
        }
        func string() -> String? {
            guard i < n, bytes[i] == 0x22 else { return nil }
            i += 1
            let start = i
            var escaped = false
            while i < n, bytes[i] != 0x22 {
                if bytes[i] == 0x5C {
                    escaped = true
                    i += 2
                } else {
                    i += 1
                }
            }
            guard i < n else { return nil }
            let raw = UnsafeRawBufferPointer(rebasing: bytes[start..<i])
            i += 1
            if !escaped { return String(validating: raw, as: UTF8.self) }
            return unescape(raw)
        }
        skipSpace()
        guard i < n, bytes[i] == 0x7B else { return nil }
        i += 1
        var fields: [String: String] = [:]
        skipSpace()
        if i < n, bytes[i] == 0x7D {
            i += 1
            skipSpace()
            return i == n ? fields : nil
        }
        while true {
            skipSpace()
            guard let key = string() else { return nil }
            skipSpace()
            guard i < n, bytes[i] == 0x3A else { return nil }
            i += 1
            skipSpace()
            guard let value = string() else { return nil }
            // jsonb keeps one value per key; a repeated key is not the store's output.
            guard fields.updateValue(value, forKey: key) == nil else { return nil }
            skipSpace()
            guard i < n else { return nil }
            if bytes[i] == 0x2C {
                i += 1
                continue
            }
            guard bytes[i] == 0x7D else { return nil }
            i += 1
            skipSpace()
            return i == n ? fields : nil
        }
    }

    /// The value of a JSON string's body with escapes; nil when malformed.
    private static func unescape(_ raw: UnsafeRawBufferPointer) -> String? {
        var quoted = [UInt8]()
        quoted.reserveCapacity(raw.count + 2)
        quoted.append(0x22)
        quoted.append(contentsOf: raw)
        quoted.append(0x22)
        return try? JSONDecoder().decode(String.self, from: Data(quoted))
    }
}

/// Reads of the global log that are known to be complete below a horizon: a page statement that
/// ran after the horizon `h` was computed and came back short had every event matching the
/// filter after its position in every transaction below `h` (those transactions had all ended
/// before it took its snapshot). So a later read from the last position it returned, with the
/// same filter, whose horizon is still at most `h`, would find nothing: ``readAll`` answers it
/// without the page statement. Transaction ids only grow, so an event appended later (even
/// after the schema was dropped and created again) is never below a recorded horizon. Bounded:
/// the oldest entries are forgotten.
final class CompleteReads: Sendable {
    private struct Key: Hashable {
        var after: LogPosition
        var filter: EventFilter
    }

    private struct State {
        var horizons: [Key: UInt64] = [:]
        var order: [Key] = []
    }

    private static let capacity = 64
    private let state = Mutex(State())

    /// Whether a read after `position` with `filter` is known to find nothing below `horizon`.
    func isComplete(after position: LogPosition, filter: EventFilter, below horizon: UInt64) -> Bool {
        state.withLock { s in
            guard let known = s.horizons[Key(after: position, filter: filter)] else { return false }
            return horizon <= known
        }
    }

    /// Records that nothing matches `filter` after `position` below `horizon`.
    func record(after position: LogPosition, filter: EventFilter, below horizon: UInt64) {
        let key = Key(after: position, filter: filter)
        state.withLock { s in
            if let known = s.horizons[key] {
                s.horizons[key] = max(known, horizon)
                return
            }
            s.horizons[key] = horizon
            s.order.append(key)
            if s.order.count > Self.capacity {
                let oldest = s.order.removeFirst()
                s.horizons[oldest] = nil
            }
        }
    }
}
