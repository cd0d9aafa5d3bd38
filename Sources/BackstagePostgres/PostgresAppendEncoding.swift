import Foundation
import NIOCore
import PostgresNIO

/// A one-dimensional PostgreSQL array in the binary wire format, built element by element.
///
/// postgres-nio encodes `[T]` without NULL elements; the group-commit call needs NULLs (no
/// command id, no metadata fields, no JSON for a byte payload), so the store writes its arrays
/// itself. The header is completed by ``finish()``.
struct PostgresArrayParameter: PostgresDynamicTypeEncodable {
    let psqlType: PostgresDataType
    var psqlFormat: PostgresFormat { .binary }
    private var body: ByteBuffer
    private let elementType: PostgresDataType
    private var count: Int32 = 0

    init(element: PostgresDataType, array: PostgresDataType, capacity: Int = 64) {
        self.psqlType = array
        self.elementType = element
        self.body = ByteBufferAllocator().buffer(capacity: capacity)
    }

    mutating func appendNull() {
        body.writeInteger(-1, as: Int32.self)
        count += 1
    }

    mutating func append(_ uuid: UUID) {
        body.writeInteger(16, as: Int32.self)
        _ = withUnsafeBytes(of: uuid.uuid) { body.writeBytes($0) }
        count += 1
    }

    mutating func append(_ uuid: UUID?) {
        if let uuid { append(uuid) } else { appendNull() }
    }

    mutating func append(_ value: Int32) {
        body.writeInteger(4, as: Int32.self)
        body.writeInteger(value)
        count += 1
    }

    mutating func append(_ value: Int64) {
        body.writeInteger(8, as: Int32.self)
        body.writeInteger(value)
        count += 1
    }

    mutating func append(_ text: String) {
        let lengthIndex = body.writerIndex
        body.writeInteger(0, as: Int32.self)
        let written = body.writeString(text)
        body.setInteger(Int32(written), at: lengthIndex)
        count += 1
    }

    mutating func append(_ text: String?) {
        if let text { append(text) } else { appendNull() }
    }

    /// Raw bytes (bytea).
    mutating func append(bytes: Data) {
        body.writeInteger(Int32(bytes.count), as: Int32.self)
        body.writeBytes(bytes)
        count += 1
    }

    /// A `jsonb` element: format version 1, then the JSON text.
    mutating func append(jsonb: Data) {
        body.writeInteger(Int32(jsonb.count + 1), as: Int32.self)
        body.writeInteger(1, as: UInt8.self)
        body.writeBytes(jsonb)
        count += 1
    }

    /// A `jsonb` element from UTF-8 text.
    mutating func append(jsonb text: String) {
        let lengthIndex = body.writerIndex
        body.writeInteger(0, as: Int32.self)
        body.writeInteger(1, as: UInt8.self)
        let written = body.writeString(text)
        body.setInteger(Int32(written + 1), at: lengthIndex)
        count += 1
    }

    func encode<JSONEncoder: PostgresJSONEncoder>(
        into buffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>
    ) {
        // ndim, has-null flag (ignored by the server), element type, then one dimension.
        buffer.writeInteger(count == 0 ? 0 : 1, as: Int32.self)
        buffer.writeInteger(0, as: Int32.self)
        buffer.writeInteger(elementType.rawValue)
        guard count > 0 else { return }
        buffer.writeInteger(count)
        buffer.writeInteger(1, as: Int32.self)
        var copy = body
        buffer.writeBuffer(&copy)
    }
}

/// Whether PostgreSQL's `jsonb` can hold `data` as the same JSON value: a JSON text (RFC 8259,
/// any top-level value) in valid UTF-8, without `\u0000` (jsonb refuses it), without unpaired
/// surrogate escapes, without duplicate keys in an object (jsonb keeps only the last), at most
/// 512 levels deep and with exponents jsonb's numeric type can represent.
///
/// Payloads that fail are stored as bytes (column `data_bytes`) and read back unchanged.
/// Keys that are equal only after unescaping (`"a"` and `"\u0061"`) are not detected.
func isStorableAsJSONB(_ data: Data) -> Bool {
    data.withUnsafeBytes { raw in
        guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return false }
        var scanner = JSONScanner(bytes: base, count: raw.count)
        return scanner.validate()
    }
}

private struct JSONScanner {
    let bytes: UnsafePointer<UInt8>
    let count: Int
    var i = 0

    init(bytes: UnsafePointer<UInt8>, count: Int) {
        self.bytes = bytes
        self.count = count
    }

    /// One open container: whether it is an object, and the byte ranges of its keys so far.
    struct Frame {
        var isObject: Bool
        var keys: [Range<Int>] = []
    }

    mutating func skipSpace() {
        while i < count {
            let c = bytes[i]
            if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { i += 1 } else { return }
        }
    }

    mutating func validate() -> Bool {
        var stack: [Frame] = []
        skipSpace()
        // Parse a value; containers push a frame and continue in the loop.
        value: while true {
            skipSpace()
            guard i < count else { return false }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                i += 1
                stack.append(Frame(isObject: true))
                if stack.count > 512 { return false }
                skipSpace()
                guard i < count else { return false }
                if bytes[i] == UInt8(ascii: "}") {
                    i += 1
                    stack.removeLast()
                } else {
                    guard readKey(into: &stack[stack.count - 1]) else { return false }
                    continue value
                }
            case UInt8(ascii: "["):
                i += 1
                stack.append(Frame(isObject: false))
                if stack.count > 512 { return false }
                skipSpace()
                guard i < count else { return false }
                if bytes[i] == UInt8(ascii: "]") {
                    i += 1
                    stack.removeLast()
                } else {
                    continue value
                }
            case UInt8(ascii: "\""):
                guard string() != nil else { return false }
            case UInt8(ascii: "t"): guard literal("true") else { return false }
            case UInt8(ascii: "f"): guard literal("false") else { return false }
            case UInt8(ascii: "n"): guard literal("null") else { return false }
            default: guard number() else { return false }
            }
            // After a value: close containers or continue with the next element.
            while true {
                skipSpace()
                guard let top = stack.last else {
                    return i == count
                }
                guard i < count else { return false }
                let c = bytes[i]
                if c == UInt8(ascii: ",") {
                    i += 1
                    if top.isObject {
                        skipSpace()
                        guard readKey(into: &stack[stack.count - 1]) else { return false }
                    }
                    continue value
                }
                if (top.isObject && c == UInt8(ascii: "}")) || (!top.isObject && c == UInt8(ascii: "]")) {
                    i += 1
                    stack.removeLast()
                    continue
                }
                return false
            }
        }
    }

    /// Reads `"key" :` and checks it against the object's earlier keys.
    mutating func readKey(into frame: inout Frame) -> Bool {
        guard i < count, bytes[i] == UInt8(ascii: "\""), let range = string() else { return false }
        let length = range.count
        for key in frame.keys where key.count == length {
            if memcmp(bytes + key.lowerBound, bytes + range.lowerBound, length) == 0 { return false }
        }
        frame.keys.append(range)
        skipSpace()
        guard i < count, bytes[i] == UInt8(ascii: ":") else { return false }
        i += 1
        return true
    }

    mutating func literal(_ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard count - i >= n, memcmp(bytes + i, word.utf8Start, n) == 0 else { return false }
        i += n
        return true
    }

    mutating func hex4() -> UInt32? {
        guard count - i >= 4 else { return nil }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let digit: UInt32
            switch c {
            case 0x30...0x39: digit = UInt32(c - 0x30)
            case 0x41...0x46: digit = UInt32(c - 0x41 + 10)
            case 0x61...0x66: digit = UInt32(c - 0x61 + 10)
            default: return nil
            }
            value = value << 4 | digit
            i += 1
        }
        return value
    }

    /// A string starting at the opening quote; returns the range of its content bytes.
    mutating func string() -> Range<Int>? {
        i += 1
        let start = i
        while i < count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return start..<(i - 1)
            }
            if c < 0x20 { return nil }
            if c == UInt8(ascii: "\\") {
                i += 1
                guard i < count else { return nil }
                switch bytes[i] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                    UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    i += 1
                case UInt8(ascii: "u"):
                    i += 1
                    guard let unit = hex4(), unit != 0 else { return nil }
                    if unit >= 0xDC00 && unit <= 0xDFFF { return nil }
                    if unit >= 0xD800 && unit <= 0xDBFF {
                        guard count - i >= 2, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u")
                        else { return nil }
                        i += 2
                        guard let low = hex4(), low >= 0xDC00 && low <= 0xDFFF else { return nil }
                    }
                default: return nil
                }
                continue
            }
            if c < 0x80 {
                i += 1
                continue
            }
            // UTF-8: a lead byte and its continuation bytes, no overlong forms or surrogates.
            let need: Int
            let minimum: UInt32
            var scalar: UInt32
            switch c {
            case 0xC2...0xDF:
                need = 1
                minimum = 0x80
                scalar = UInt32(c & 0x1F)
            case 0xE0...0xEF:
                need = 2
                minimum = 0x800
                scalar = UInt32(c & 0x0F)
            case 0xF0...0xF4:
                need = 3
                minimum = 0x10000
                scalar = UInt32(c & 0x07)
            default: return nil
            }
            guard count - i > need else { return nil }
            for k in 1...need {
                let b = bytes[i + k]
                guard b & 0xC0 == 0x80 else { return nil }
                scalar = scalar << 6 | UInt32(b & 0x3F)
            }
            if scalar < minimum || scalar > 0x10FFFF || (scalar >= 0xD800 && scalar <= 0xDFFF) { return nil }
            i += need + 1
        }
        return nil
    }

    mutating func digits() -> Int {
        let start = i
        while i < count, bytes[i] >= 0x30, bytes[i] <= 0x39 { i += 1 }
        return i - start
    }

    mutating func number() -> Bool {
        if i < count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < count else { return false }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            let n = digits()
            guard n > 0, n <= 100_000 else { return false }
        }
        if i < count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            let n = digits()
            guard n > 0, n <= 16_000 else { return false }
        }
        if i < count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            let start = i
            let n = digits()
            guard n > 0 else { return false }
            // numeric's exponent range: keep well inside it.
            if n > 4 { return false }
            var exponent = 0
            for k in start..<i { exponent = exponent * 10 + Int(bytes[k] - 0x30) }
            if exponent > 10_000 { return false }
        }
        return true
    }
}
