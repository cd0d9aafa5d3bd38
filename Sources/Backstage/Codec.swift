import Foundation

/// Errors raised while turning stored events into typed ones.
public enum CodecError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No member or upcaster of the family reads this type name and schema version.
    case unknownEvent(family: String, type: String, schemaVersion: Int, position: Int64)
    /// The stored JSON did not decode into the expected shape.
    case malformed(type: String, schemaVersion: Int, position: Int64, reason: String)
    /// The family declares the same type name and schema version twice.
    case duplicateMember(family: String, type: String, schemaVersion: Int)

    public var description: String {
        switch self {
        case .unknownEvent(let family, let type, let version, let position):
            "\(family) has no member or upcaster for event type '\(type)' version \(version) (at position \(position))"
        case .malformed(let type, let version, let position, let reason):
            "event '\(type)' version \(version) at position \(position) does not decode: \(reason)"
        case .duplicateMember(let family, let type, let version):
            "\(family) declares event type '\(type)' version \(version) twice"
        }
    }
}

/// Encodes and decodes the events of one ``EventFamily``, applying its upcasters on read.
///
/// The same codec decodes for aggregates, history, time travel, handlers and projections, so an
/// upcaster runs on every read path. Upcasters chain (see ``Upcaster``): a stored event is read
/// by following upcasters until a member of the family reads its shape.
public struct EventCodec<Family: EventFamily>: Sendable {
    private struct Key: Hashable {
        var type: String
        var version: Int
    }
    private enum Reader: Sendable {
        case member(@Sendable (JSONDecoder, Data) throws -> Family)
        case upcaster(@Sendable (JSONDecoder, Data) throws -> Upcaster<Family>.Step)
    }
    private let readers: [Key: Reader]
    private let encoder: JSONEncoder
    private let decoder: JSONDecoder

    /// Builds the codec; fails when two members or upcasters read the same type and version.
    public init() throws(CodecError) {
        var readers: [Key: Reader] = [:]
        let entries =
            Family.members.map { (Key(type: $0.typeName, version: $0.schemaVersion), Reader.member($0.decode)) }
            + Family.upcasters.map { (Key(type: $0.typeName, version: $0.schemaVersion), Reader.upcaster($0.step)) }
        for (key, reader) in entries {
            if readers.updateValue(reader, forKey: key) != nil {
                throw .duplicateMember(family: "\(Family.self)", type: key.type, schemaVersion: key.version)
            }
        }
        self.readers = readers
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        self.encoder = encoder
        self.decoder = JSONDecoder()
    }

    /// The type names this codec reads (current and upcast), for filtering the log in the database.
    public var typeNames: Set<String> { Set(readers.keys.map(\.type)) }

    /// The filter of a subscription that consumes this family: its type names (upcast ones included).
    public var filter: EventFilter { EventFilter(types: typeNames) }

    /// Whether the codec reads events of this type name at some version.
    public func reads(type: String) -> Bool { readers.keys.contains { $0.type == type } }

    /// Turns a family value into an event to append.
    ///
    /// The JSON is deterministic byte for byte (keys sorted), so a retried command produces the
    /// same bytes and the store's idempotency fingerprint recognises it. One exception is out of
    /// the codec's reach: a `Set` property encodes its elements in hash order, which differs
    /// between processes; store an array (sorted) in events instead.
    public func encode(_ value: Family, metadata: EventMetadata, id: UUID = UUIDv7.next()) throws
        -> EventData
    {
        let event = value.event
        let type = Swift.type(of: event)
        return EventData(
            id: id, type: type.typeName, schemaVersion: type.schemaVersion,
            data: try sortedKeysJSON(event), metadata: metadata)
    }

    /// The JSON of `event` with sorted keys: the same bytes as `JSONEncoder` writes, through the
    /// faster ``SortedKeysJSON`` where it reproduces them, through `JSONEncoder` otherwise.
    private func sortedKeysJSON(_ event: some Event) throws -> Data {
        if let data = SortedKeysJSON.encode(event) { return data }
        return try encoder.encode(event)
    }

    /// Decodes a stored event into the family, following upcasters from older shapes and names.
    /// - Throws: ``CodecError/unknownEvent(family:type:schemaVersion:position:)`` when nothing
    ///   reads the stored type and version (or a shape an upcaster leads to);
    ///   ``CodecError/malformed(type:schemaVersion:position:reason:)`` when the JSON does not
    ///   decode or an upcaster throws. Both name the event's position.
    public func decode(_ recorded: RecordedEvent) throws(CodecError) -> Family {
        var key = Key(type: recorded.type, version: recorded.schemaVersion)
        var data = recorded.data
        var seen: Set<Key> = []
        while true {
            guard let reader = readers[key] else {
                throw .unknownEvent(
                    family: "\(Family.self)", type: key.type, schemaVersion: key.version, position: recorded.position)
            }
            guard seen.insert(key).inserted else {
                throw .malformed(
                    type: recorded.type, schemaVersion: recorded.schemaVersion, position: recorded.position,
                    reason: "the upcasters of \(Family.self) loop back to '\(key.type)' version \(key.version)")
            }
            do {
                switch reader {
                case .member(let decode):
                    return try decode(decoder, data)
                case .upcaster(let step):
                    switch try step(decoder, data) {
                    case .value(let value): return value
                    case .next(let type, let version, let next):
                        key = Key(type: type, version: version)
                        data = next
                    }
                }
            } catch {
                throw .malformed(
                    type: recorded.type, schemaVersion: recorded.schemaVersion, position: recorded.position,
                    reason: key.type == recorded.type && key.version == recorded.schemaVersion
                        ? "\(error)" : "as '\(key.type)' version \(key.version): \(error)")
            }
        }
    }

    /// Decodes a stored event into an ``Envelope``: the family value with where and when it was stored.
    /// - Throws: the errors of ``decode(_:)``.
    public func envelope(_ recorded: RecordedEvent) throws(CodecError) -> Envelope<Family> {
        Envelope(event: try decode(recorded), recorded: recorded)
    }
}

extension RecordedEvent {
    /// Decodes this event as `E`, without upcasting (there is no family to take upcasters from).
    ///
    /// - Returns: the event when it is stored as `E`'s type name and schema version; nil when it
    ///   is stored under another type name (another kind of event).
    /// - Throws: ``CodecError/unknownEvent(family:type:schemaVersion:position:)`` when it is
    ///   stored as `E`'s type name at another schema version (use ``decode(as:in:)`` or
    ///   ``decode(_:)`` with the family, whose upcasters read it);
    ///   ``CodecError/malformed(type:schemaVersion:position:reason:)`` when the JSON does not decode.
    ///   It never returns nil for an event stored under `E`'s name.
    public func decode<E: Event>(as type: E.Type) throws(CodecError) -> E? {
        guard self.type == E.typeName else { return nil }
        guard schemaVersion == E.schemaVersion else {
            throw .unknownEvent(
                family: "\(E.self)", type: self.type, schemaVersion: schemaVersion, position: position)
        }
        do {
            return try JSONDecoder().decode(E.self, from: data)
        } catch {
            throw .malformed(type: self.type, schemaVersion: schemaVersion, position: position, reason: "\(error)")
        }
    }

    /// Decodes this event as `E` through `family`'s codec, upcasting older shapes and renamed types.
    ///
    /// - Returns: the event when, after upcasting, it is an `E`; nil when it is another event
    ///   (another member of the family, or a type the family does not read at all).
    /// - Throws: ``CodecError`` when it is stored under a name the family reads, or under `E`'s
    ///   name, and cannot be read (unknown version, malformed JSON).
    public func decode<E: Event, Family: EventFamily>(as type: E.Type, in family: Family.Type) throws(CodecError)
        -> E?
    {
        let codec = try EventCodec<Family>.shared()
        guard codec.reads(type: self.type) || self.type == E.typeName else { return nil }
        return try codec.decode(self).event as? E
    }

    /// Decodes this event into `family`, upcasting older shapes and renamed types.
    /// - Throws: the errors of ``EventCodec/decode(_:)``.
    public func decode<Family: EventFamily>(_ family: Family.Type) throws(CodecError) -> Family {
        try EventCodec<Family>.shared().decode(self)
    }
}
