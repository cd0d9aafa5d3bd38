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
public struct EventCodec<Family: EventFamily>: Sendable {
    private struct Key: Hashable {
        var type: String
        var version: Int
    }
    private let decoders: [Key: @Sendable (JSONDecoder, Data) throws -> Family]
    private let encoder: JSONEncoder
    private let decoder: JSONDecoder

    /// Builds the codec; fails when two members or upcasters read the same type and version.
    public init() throws(CodecError) {
        var decoders: [Key: @Sendable (JSONDecoder, Data) throws -> Family] = [:]
        let entries =
            Family.members.map { (Key(type: $0.typeName, version: $0.schemaVersion), $0.decode) }
            + Family.upcasters.map { (Key(type: $0.typeName, version: $0.schemaVersion), $0.decode) }
        for (key, decode) in entries {
            if decoders.updateValue(decode, forKey: key) != nil {
                throw .duplicateMember(family: "\(Family.self)", type: key.type, schemaVersion: key.version)
            }
        }
        self.decoders = decoders
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        self.encoder = encoder
        self.decoder = JSONDecoder()
    }

    /// The type names this codec reads (current and upcast), for filtering the log in the database.
    public var typeNames: Set<String> { Set(decoders.keys.map(\.type)) }

    /// Whether the codec reads events of this type name at some version.
    public func reads(type: String) -> Bool { decoders.keys.contains { $0.type == type } }

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
            data: try encoder.encode(event), metadata: metadata)
    }

    /// Decodes a stored event into the family, upcasting older shapes.
    public func decode(_ recorded: RecordedEvent) throws(CodecError) -> Family {
        guard let decode = decoders[Key(type: recorded.type, version: recorded.schemaVersion)] else {
            throw .unknownEvent(
                family: "\(Family.self)", type: recorded.type, schemaVersion: recorded.schemaVersion,
                position: recorded.position)
        }
        do {
            return try decode(decoder, recorded.data)
        } catch {
            throw .malformed(
                type: recorded.type, schemaVersion: recorded.schemaVersion, position: recorded.position,
                reason: "\(error)")
        }
    }
}

extension RecordedEvent {
    /// Decodes this event as `E` when its type name and schema version are `E`'s; nil otherwise.
    public func decode<E: Event>(as type: E.Type) throws(CodecError) -> E? {
        guard self.type == E.typeName, schemaVersion == E.schemaVersion else { return nil }
        do {
            return try JSONDecoder().decode(E.self, from: data)
        } catch {
            throw .malformed(type: self.type, schemaVersion: schemaVersion, position: position, reason: "\(error)")
        }
    }
}
