import Foundation

#if canImport(Darwin)
    import Darwin
#elseif canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Writes a value's JSON exactly as Foundation's `JSONEncoder` with `.sortedKeys` and its default
/// strategies writes it, byte for byte, several times faster: no dictionary per object, no class
/// per nested value, keys sorted once when the object is written.
///
/// The bytes of an event's data are hashed for idempotency (``appendFingerprint(_:)``) and compared
/// across processes and releases, so this writer must never differ from `JSONEncoder`: where it
/// would have to guess (`superEncoder`, a key written twice, a container requested over another,
/// a non-finite number, nesting deeper than `JSONEncoder` allows), or when the value's `encode(to:)`
/// throws, ``encode(_:)`` returns nil and the caller uses `JSONEncoder`, which produces the bytes
/// or the error. `RouterCodecTests` compares the two on every shape the writer reproduces.
///
/// What `JSONEncoder` does with the default strategies, and this writer too: keys sorted by their
/// UTF-8 bytes; strings escaped for `"`, `\`, `/` and control characters (`\b`, `\f`, `\n`, `\r`,
/// `\t`, else `\u00xx`), other characters as UTF-8; integers in decimal; a `Float` or `Double` as
/// its `description` without a trailing `.0`; `Data` in Base64; a `URL` as its absolute string; a
/// `Decimal` as its `description`, unquoted; a `Date` as its `encode(to:)` writes it (seconds
/// since 2001 as a number); a nested value that encodes nothing as `{}`.
package enum SortedKeysJSON {
    /// The JSON of `value`, or nil when `JSONEncoder` must write it (see ``SortedKeysJSON``).
    package static func encode<T: Encodable>(_ value: T) -> Data? {
        var builder = SortedJSONBuilder.take()
        defer { SortedJSONBuilder.giveBack(&builder) }
        guard let root = try? builder.encodeValue(value, path: [], key: nil), !builder.unsupported else {
            return nil
        }
        builder.out.reserveCapacity(builder.scratch.count + 64)
        guard builder.write(root, depth: 0) else { return nil }
        return Data(builder.out)
    }
}

/// One spare builder per thread, so an encoding reuses the buffers of the previous one on its
/// thread instead of allocating half a dozen arrays (an encoding is synchronous: it never
/// changes threads).
private let spareBuilderKey: pthread_key_t = {
    var key = pthread_key_t()
    #if canImport(Darwin)
        pthread_key_create(&key) { Unmanaged<SortedJSONBuilder>.fromOpaque($0).release() }
    #else
        pthread_key_create(&key) { raw in
            if let raw { Unmanaged<SortedJSONBuilder>.fromOpaque(raw).release() }
        }
    #endif
    return key
}()

/// The values an encoding produces: scalars are written to `scratch` at once (their JSON bytes),
/// containers are lists of values, serialised (objects with sorted keys) when the encoding is done.
final class SortedJSONBuilder {
    enum Value {
        /// JSON bytes in `scratch`.
        case scalar(start: Int, end: Int)
        case object(Int)
        case array(Int)
        /// A nested value that encoded nothing: `JSONEncoder` writes `{}`.
        case emptyObject
    }

    struct Container {
        var keys: [String] = []
        var values: [Value] = []
    }

    /// `JSONEncoder` rejects deeper nesting; this writer leaves such values to it.
    static let maximumDepth = 500

    // A builder lives for one `encode` on one thread and no access to these overlaps another:
    // the runtime's exclusivity checks (a thread-local access set per access) are left out.
    @exclusivity(unchecked) var scratch: [UInt8] = []
    /// The containers in use are the first `containerCount`; the others are kept for reuse.
    @exclusivity(unchecked) var containers: [Container] = []
    @exclusivity(unchecked) var containerCount = 0
    /// The value each `encode(to:)` in progress produced so far (a stack: one per nesting level).
    @exclusivity(unchecked) var slots: [Value?] = []
    /// Set when the value used something this writer does not reproduce exactly.
    @exclusivity(unchecked) var unsupported = false
    /// The JSON written by ``write(_:depth:)``.
    @exclusivity(unchecked) var out: [UInt8] = []
    /// How the last objects' keys were written, kept across encodings on this thread: a value of
    /// one type has the same keys in the same order every time, so it is sorted once.
    @exclusivity(unchecked) var layouts: [ObjectLayout] = []
    @exclusivity(unchecked) var nextLayout = 0
    static let maximumLayouts = 16

    /// The keys of an object as its `encode(to:)` wrote them, and how they are written: in sorted
    /// order, each as its escaped, quoted bytes and a colon.
    struct ObjectLayout {
        var keys: [String]
        var order: [Int]
        var keyBytes: [[UInt8]]
    }

    init() {
        scratch.reserveCapacity(256)
    }

    /// A builder for one encoding: this thread's spare one, or a new one.
    static func take() -> SortedJSONBuilder {
        guard let raw = pthread_getspecific(spareBuilderKey) else { return SortedJSONBuilder() }
        // Out of the slot while in use: an encoding nested in this one gets a builder of its own.
        pthread_setspecific(spareBuilderKey, nil)
        return Unmanaged<SortedJSONBuilder>.fromOpaque(raw).takeRetainedValue()
    }

    /// Keeps `builder` as this thread's spare, emptied, unless a spare is there already, an
    /// encoder or container of it outlived the encoding, or it grew large.
    static func giveBack(_ builder: inout SortedJSONBuilder) {
        guard isKnownUniquelyReferenced(&builder), builder.scratch.capacity <= 1 << 16,
            builder.out.capacity <= 1 << 16, builder.containers.count <= 64,
            pthread_getspecific(spareBuilderKey) == nil
        else { return }
        builder.scratch.removeAll(keepingCapacity: true)
        builder.out.removeAll(keepingCapacity: true)
        builder.slots.removeAll(keepingCapacity: true)
        builder.containerCount = 0
        builder.unsupported = false
        pthread_setspecific(spareBuilderKey, Unmanaged.passRetained(builder).toOpaque())
    }

    // MARK: Values

    /// Encodes `value`; nil when it encoded nothing.
    func encodeValue<T: Encodable>(_ value: T, path: [any CodingKey], key: (any CodingKey)?) throws -> Value? {
        // The types `JSONEncoder` writes in its own way rather than through their `encode(to:)`.
        if T.self == String.self { return string(value as! String) }
        if T.self == Data.self { return string((value as! Data).base64EncodedString()) }
        if T.self == URL.self { return string((value as! URL).absoluteString) }
        if T.self == Decimal.self { return literal((value as! Decimal).description) }
        if slots.count >= Self.maximumDepth {
            unsupported = true
            return nil
        }
        let slot = slots.count
        slots.append(nil)
        defer { slots.removeLast() }
        var codingPath = path
        if let key { codingPath.append(key) }
        try value.encode(to: SortedJSONEncoder(builder: self, slot: slot, codingPath: codingPath))
        return slot < slots.count ? slots[slot] : nil
    }

    func string(_ value: String) -> Value {
        let start = scratch.count
        scratch.append(UInt8(ascii: "\""))
        Self.appendEscaped(value, to: &scratch)
        scratch.append(UInt8(ascii: "\""))
        return .scalar(start: start, end: scratch.count)
    }

    func literal(_ text: String) -> Value {
        let start = scratch.count
        scratch.append(contentsOf: text.utf8)
        return .scalar(start: start, end: scratch.count)
    }

    func literal(_ text: StaticString) -> Value {
        let start = scratch.count
        text.withUTF8Buffer { scratch.append(contentsOf: $0) }
        return .scalar(start: start, end: scratch.count)
    }

    func bool(_ value: Bool) -> Value { value ? literal("true") : literal("false") }

    func integer<I: FixedWidthInteger>(_ value: I) -> Value {
        let start = scratch.count
        if value == 0 {
            scratch.append(UInt8(ascii: "0"))
            return .scalar(start: start, end: scratch.count)
        }
        if I.bitWidth > 64 { return literal(value.description) }
        var magnitude = UInt64(truncatingIfNeeded: value.magnitude)
        if value < 0 { scratch.append(UInt8(ascii: "-")) }
        let digitsStart = scratch.count
        while magnitude > 0 {
            scratch.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10))
            magnitude /= 10
        }
        scratch[digitsStart...].reverse()
        return .scalar(start: start, end: scratch.count)
    }

    func floatingPoint<F: BinaryFloatingPoint & CustomStringConvertible>(_ value: F) -> Value {
        guard value.isFinite else {
            // `JSONEncoder` throws (default non-conforming float strategy): let it.
            unsupported = true
            return literal("null")
        }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        return literal(text)
    }

    // MARK: Containers

    func newContainer() -> Int {
        let c = containerCount
        containerCount += 1
        if c < containers.count {
            containers[c].keys.removeAll(keepingCapacity: true)
            containers[c].values.removeAll(keepingCapacity: true)
        } else {
            containers.append(Container())
        }
        return c
    }

    /// The object the encoder at `slot` writes into (created by the first request).
    func object(at slot: Int) -> Int {
        guard slot >= 0, slot < slots.count else { return unsupportedContainer() }
        switch slots[slot] {
        case nil:
            let c = newContainer()
            slots[slot] = .object(c)
            return c
        case .object(let c): return c
        default: return unsupportedContainer()
        }
    }

    /// The array the encoder at `slot` writes into (created by the first request).
    func array(at slot: Int) -> Int {
        guard slot >= 0, slot < slots.count else { return unsupportedContainer() }
        switch slots[slot] {
        case nil:
            let c = newContainer()
            slots[slot] = .array(c)
            return c
        case .array(let c): return c
        default: return unsupportedContainer()
        }
    }

    /// Sets the single value of the encoder at `slot`.
    func setSingle(_ value: Value, at slot: Int) {
        guard slot >= 0, slot < slots.count, slots[slot] == nil else {
            unsupported = true
            return
        }
        slots[slot] = value
    }

    func unsupportedContainer() -> Int {
        unsupported = true
        return newContainer()
    }

    func add(_ value: Value, key: String, to container: Int) {
        containers[container].keys.append(key)
        containers[container].values.append(value)
    }

    func append(_ value: Value, to container: Int) {
        containers[container].values.append(value)
    }

    // MARK: Writing

    /// Writes `value` to ``out``; false when an object has a key twice (`JSONEncoder` keeps the
    /// last value or merges nested containers: left to it).
    func write(_ value: Value, depth: Int) -> Bool {
        switch value {
        case .scalar(let start, let end):
            scratch.withUnsafeBufferPointer { out.append(contentsOf: UnsafeBufferPointer(rebasing: $0[start..<end])) }
        case .emptyObject:
            out.append(UInt8(ascii: "{"))
            out.append(UInt8(ascii: "}"))
        case .array(let c):
            guard depth < Self.maximumDepth else { return false }
            out.append(UInt8(ascii: "["))
            let values = containers[c].values
            for (i, element) in values.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                guard write(element, depth: depth + 1) else { return false }
            }
            out.append(UInt8(ascii: "]"))
        case .object(let c):
            guard depth < Self.maximumDepth else { return false }
            let keys = containers[c].keys
            let values = containers[c].values
            guard let layout = layout(of: keys) else { return false }  // a key written twice
            out.append(UInt8(ascii: "{"))
            for n in layout.order.indices {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                out.append(contentsOf: layout.keyBytes[n])
                guard write(values[layout.order[n]], depth: depth + 1) else { return false }
            }
            out.append(UInt8(ascii: "}"))
        }
        return true
    }

    /// How an object with `keys` (in the order they were encoded) is written; nil when a key
    /// appears twice. The same keys as a recent object reuse its layout.
    func layout(of keys: [String]) -> ObjectLayout? {
        // Byte for byte: `==` on `String` equates canonically equivalent keys, whose bytes differ.
        for layout in layouts where layout.keys.count == keys.count {
            if zip(layout.keys, keys).allSatisfy({ ExactString($0) == ExactString($1) }) { return layout }
        }
        // The key order, sorted by insertion (objects have few keys).
        var order: [Int] = []
        order.reserveCapacity(keys.count)
        for i in keys.indices {
            order.append(i)
            var j = i
            while j > 0, Self.precedes(keys[i], keys[order[j - 1]]) {
                order[j] = order[j - 1]
                j -= 1
            }
            order[j] = i
        }
        for n in order.indices.dropFirst() where !Self.precedes(keys[order[n - 1]], keys[order[n]]) {
            return nil
        }
        let keyBytes = order.map { i in
            var bytes: [UInt8] = [UInt8(ascii: "\"")]
            Self.appendEscaped(keys[i], to: &bytes)
            bytes.append(UInt8(ascii: "\""))
            bytes.append(UInt8(ascii: ":"))
            return bytes
        }
        let layout = ObjectLayout(keys: keys, order: order, keyBytes: keyBytes)
        if layouts.count < Self.maximumLayouts {
            layouts.append(layout)
        } else {
            layouts[nextLayout] = layout
            nextLayout = (nextLayout + 1) % Self.maximumLayouts
        }
        return layout
    }

    /// `JSONEncoder`'s key order: by UTF-8 bytes.
    static func precedes(_ a: String, _ b: String) -> Bool {
        var a = a
        var b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in
                let n = min(x.count, y.count)
                let c = n == 0 ? 0 : memcmp(x.baseAddress!, y.baseAddress!, n)
                return c < 0 || (c == 0 && x.count < y.count)
            }
        }
    }

    /// Appends `string`'s UTF-8 bytes escaped as `JSONEncoder` escapes them (without quotes).
    static func appendEscaped(_ string: String, to out: inout [UInt8]) {
        var string = string
        string.withUTF8 { bytes in
            // Most strings need no escape: one scan, one copy.
            var clean = true
            for b in bytes
            where b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") || b == UInt8(ascii: "/") {
                clean = false
                break
            }
            if clean {
                out.append(contentsOf: bytes)
                return
            }
            var mark = 0
            for i in bytes.indices {
                let b = bytes[i]
                let escape: (UInt8, UInt8?)
                switch b {
                case UInt8(ascii: "\""): escape = (UInt8(ascii: "\""), nil)
                case UInt8(ascii: "\\"): escape = (UInt8(ascii: "\\"), nil)
                case UInt8(ascii: "/"): escape = (UInt8(ascii: "/"), nil)
                case 0x08: escape = (UInt8(ascii: "b"), nil)
                case 0x0C: escape = (UInt8(ascii: "f"), nil)
                case 0x0A: escape = (UInt8(ascii: "n"), nil)
                case 0x0D: escape = (UInt8(ascii: "r"), nil)
                case 0x09: escape = (UInt8(ascii: "t"), nil)
                case 0x00...0x1F: escape = (UInt8(ascii: "u"), b)
                default: continue
                }
                if mark < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[mark..<i])) }
                out.append(UInt8(ascii: "\\"))
                out.append(escape.0)
                if let code = escape.1 {
                    out.append(UInt8(ascii: "0"))
                    out.append(UInt8(ascii: "0"))
                    out.append(hexDigit(code >> 4))
                    out.append(hexDigit(code & 0xF))
                }
                mark = i + 1
            }
            if mark < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[mark...])) }
        }
    }

    private static func hexDigit(_ v: UInt8) -> UInt8 {
        v < 10 ? UInt8(ascii: "0") &+ v : UInt8(ascii: "a") &+ (v &- 10)
    }
}

extension SortedJSONBuilder.Value: Equatable {}

// MARK: - Encoder and containers

struct SortedJSONEncoder: Encoder {
    let builder: SortedJSONBuilder
    let slot: Int
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(
            SortedJSONKeyedContainer<Key>(builder: builder, container: builder.object(at: slot), codingPath: codingPath)
        )
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        SortedJSONUnkeyedContainer(builder: builder, container: builder.array(at: slot), codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SortedJSONSingleValueContainer(builder: builder, slot: slot, codingPath: codingPath)
    }
}

struct SortedJSONKeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let builder: SortedJSONBuilder
    let container: Int
    let codingPath: [any CodingKey]

    private func add(_ value: SortedJSONBuilder.Value, _ key: Key) {
        builder.add(value, key: key.stringValue, to: container)
    }

    mutating func encodeNil(forKey key: Key) throws { add(builder.literal("null"), key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { add(builder.bool(value), key) }
    mutating func encode(_ value: String, forKey key: Key) throws { add(builder.string(value), key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { add(builder.floatingPoint(value), key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { add(builder.floatingPoint(value), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { add(builder.integer(value), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { add(builder.integer(value), key) }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        add(try builder.encodeValue(value, path: codingPath, key: key) ?? .emptyObject, key)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
        -> KeyedEncodingContainer<NestedKey>
    {
        let nested = builder.newContainer()
        add(.object(nested), key)
        return KeyedEncodingContainer(
            SortedJSONKeyedContainer<NestedKey>(builder: builder, container: nested, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let nested = builder.newContainer()
        add(.array(nested), key)
        return SortedJSONUnkeyedContainer(builder: builder, container: nested, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        builder.unsupported = true
        return SortedJSONEncoder(builder: builder, slot: -1, codingPath: codingPath)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        builder.unsupported = true
        return SortedJSONEncoder(builder: builder, slot: -1, codingPath: codingPath + [key])
    }
}

struct SortedJSONUnkeyedContainer: UnkeyedEncodingContainer {
    let builder: SortedJSONBuilder
    let container: Int
    let codingPath: [any CodingKey]

    var count: Int { builder.containers[container].values.count }

    private func add(_ value: SortedJSONBuilder.Value) { builder.append(value, to: container) }

    mutating func encodeNil() throws { add(builder.literal("null")) }
    mutating func encode(_ value: Bool) throws { add(builder.bool(value)) }
    mutating func encode(_ value: String) throws { add(builder.string(value)) }
    mutating func encode(_ value: Double) throws { add(builder.floatingPoint(value)) }
    mutating func encode(_ value: Float) throws { add(builder.floatingPoint(value)) }
    mutating func encode(_ value: Int) throws { add(builder.integer(value)) }
    mutating func encode(_ value: Int8) throws { add(builder.integer(value)) }
    mutating func encode(_ value: Int16) throws { add(builder.integer(value)) }
    mutating func encode(_ value: Int32) throws { add(builder.integer(value)) }
    mutating func encode(_ value: Int64) throws { add(builder.integer(value)) }
    mutating func encode(_ value: UInt) throws { add(builder.integer(value)) }
    mutating func encode(_ value: UInt8) throws { add(builder.integer(value)) }
    mutating func encode(_ value: UInt16) throws { add(builder.integer(value)) }
    mutating func encode(_ value: UInt32) throws { add(builder.integer(value)) }
    mutating func encode(_ value: UInt64) throws { add(builder.integer(value)) }

    mutating func encode<T: Encodable>(_ value: T) throws {
        let key = IndexKey(index: count)
        add(try builder.encodeValue(value, path: codingPath, key: key) ?? .emptyObject)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type)
        -> KeyedEncodingContainer<NestedKey>
    {
        let key = IndexKey(index: count)
        let nested = builder.newContainer()
        add(.object(nested))
        return KeyedEncodingContainer(
            SortedJSONKeyedContainer<NestedKey>(builder: builder, container: nested, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let key = IndexKey(index: count)
        let nested = builder.newContainer()
        add(.array(nested))
        return SortedJSONUnkeyedContainer(builder: builder, container: nested, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        builder.unsupported = true
        return SortedJSONEncoder(builder: builder, slot: -1, codingPath: codingPath)
    }
}

struct SortedJSONSingleValueContainer: SingleValueEncodingContainer {
    let builder: SortedJSONBuilder
    let slot: Int
    let codingPath: [any CodingKey]

    private func set(_ value: SortedJSONBuilder.Value) { builder.setSingle(value, at: slot) }

    mutating func encodeNil() throws { set(builder.literal("null")) }
    mutating func encode(_ value: Bool) throws { set(builder.bool(value)) }
    mutating func encode(_ value: String) throws { set(builder.string(value)) }
    mutating func encode(_ value: Double) throws { set(builder.floatingPoint(value)) }
    mutating func encode(_ value: Float) throws { set(builder.floatingPoint(value)) }
    mutating func encode(_ value: Int) throws { set(builder.integer(value)) }
    mutating func encode(_ value: Int8) throws { set(builder.integer(value)) }
    mutating func encode(_ value: Int16) throws { set(builder.integer(value)) }
    mutating func encode(_ value: Int32) throws { set(builder.integer(value)) }
    mutating func encode(_ value: Int64) throws { set(builder.integer(value)) }
    mutating func encode(_ value: UInt) throws { set(builder.integer(value)) }
    mutating func encode(_ value: UInt8) throws { set(builder.integer(value)) }
    mutating func encode(_ value: UInt16) throws { set(builder.integer(value)) }
    mutating func encode(_ value: UInt32) throws { set(builder.integer(value)) }
    mutating func encode(_ value: UInt64) throws { set(builder.integer(value)) }

    mutating func encode<T: Encodable>(_ value: T) throws {
        // `JSONEncoder` encodes the value with the same encoder: a value already set is an error there.
        guard slot >= 0, slot < builder.slots.count, builder.slots[slot] == nil else {
            builder.unsupported = true
            return
        }
        set(try builder.encodeValue(value, path: codingPath, key: nil) ?? .emptyObject)
    }
}

/// The coding key of an element of an unkeyed container (for coding paths).
private struct IndexKey: CodingKey {
    let index: Int
    init(index: Int) { self.index = index }
    init?(stringValue: String) { nil }
    init?(intValue: Int) { index = intValue }
    var stringValue: String { "Index \(index)" }
    var intValue: Int? { index }
}
