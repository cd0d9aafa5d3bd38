import Backstage
import Foundation
import Testing

// The codec writes event data with its own sorted-keys JSON writer; these tests hold it to
// `JSONEncoder` with `.sortedKeys`, byte for byte: the bytes are hashed for idempotency, so a
// retried command must produce them identically whichever release or path wrote them first.

struct JSONScalars: Event {
    static let typeName = "JSONScalars"
    var int: Int
    var int8: Int8
    var int16: Int16
    var int32: Int32
    var int64: Int64
    var uint: UInt
    var uint8: UInt8
    var uint16: UInt16
    var uint32: UInt32
    var uint64: UInt64
    var bool: Bool
    var double: Double
    var float: Float
    var string: String
    var optional: String?
    var optionalInt: Int?
}

struct JSONInner: Codable, Sendable, Hashable {
    var name: String
    var tags: [String]
    var empty: [Int]
}

enum JSONChoice: Codable, Sendable {
    case none
    case one(Int)
    case pair(label: String, value: Double)
    case inner(JSONInner)
}

struct JSONEmpty: Codable, Sendable {}

struct JSONShapes: Event {
    static let typeName = "JSONShapes"
    var ints: [Int]
    var strings: [String]
    var doubles: [Double]
    var floats: [Float]
    var bytes: [UInt8]
    var matrix: [[Int]]
    var byName: [String: Int]
    var byNumber: [Int: String]
    var date: Date
    var data: Data
    var url: URL
    var decimal: Decimal
    var uuid: UUID
    var inner: JSONInner
    var inners: [JSONInner]
    var optionalInner: JSONInner?
    var choices: [JSONChoice]
    var empty: JSONEmpty
    var optionals: [Int?]
}

/// Keys whose order differs between byte order and other collations.
struct JSONKeys: Event {
    static let typeName = "JSONKeys"
    var values: [String: String]
    var b = 1
    var B = 2
    var a10 = 3
    var a2 = 4
    var a1 = 5
    var _z = 6
    var zé = 7
    var ze = 8
    var Zed = 9

    init(values: [String: String]) { self.values = values }
}

/// A hand-written `encode(to:)` the fast writer leaves to `JSONEncoder`: a key written twice,
/// a nested container requested twice (merged), a `superEncoder`; and a container requested twice.
struct JSONOdd: Event {
    static let typeName = "JSONOdd"
    var variant: Int

    enum Keys: String, CodingKey { case a, b, `super` }

    init(variant: Int) { self.variant = variant }
    init(from decoder: any Decoder) throws { variant = 0 }

    func encode(to encoder: any Encoder) throws {
        var keyed = encoder.container(keyedBy: Keys.self)
        switch variant {
        case 0:
            try keyed.encode(1, forKey: .a)
            try keyed.encode(2, forKey: .a)
        case 1:
            var first = keyed.nestedContainer(keyedBy: Keys.self, forKey: .b)
            try first.encode("x", forKey: .b)
            var second = keyed.nestedContainer(keyedBy: Keys.self, forKey: .b)
            try second.encode("y", forKey: .a)
        case 2:
            try keyed.encode(1, forKey: .b)
            try JSONInner(name: "s", tags: [], empty: []).encode(to: keyed.superEncoder())
        default:
            try keyed.encode("late", forKey: .a)
            var again = encoder.container(keyedBy: Keys.self)
            try again.encode("later", forKey: .b)
        }
    }
}

struct JSONNotFinite: Event {
    static let typeName = "JSONNotFinite"
    var value: Double
}

enum JSONEvent: EventFamily {
    case scalars(JSONScalars)
    case shapes(JSONShapes)
    case keys(JSONKeys)
    case odd(JSONOdd)
    case notFinite(JSONNotFinite)

    static let members: [EventMember<JSONEvent>] = [
        .init(scalars), .init(shapes), .init(keys), .init(odd), .init(notFinite),
    ]

    var event: any Event {
        switch self {
        case .scalars(let e): e
        case .shapes(let e): e
        case .keys(let e): e
        case .odd(let e): e
        case .notFinite(let e): e
        }
    }
}

@Suite("Sorted-keys JSON")
struct SortedJSONTests {
    let codec = try! EventCodec<JSONEvent>()

    func reference(_ event: any Event) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        func encode<E: Event>(_ event: E) throws -> Data { try encoder.encode(event) }
        return try _openExistential(event, do: encode)
    }

    /// The codec writes `value` as `JSONEncoder` does; through the fast writer unless `fast` is false.
    func expectSameBytes(_ value: JSONEvent, fast: Bool = true, sourceLocation: SourceLocation = #_sourceLocation)
        throws
    {
        let written = try codec.encode(value, metadata: EventMetadata()).data
        let expected = try reference(value.event)
        func direct<E: Event>(_ event: E) -> Data? { SortedKeysJSON.encode(event) }
        let fastBytes = _openExistential(value.event, do: direct)
        #expect((fastBytes != nil) == fast, sourceLocation: sourceLocation)
        if let fastBytes { #expect(fastBytes == expected, sourceLocation: sourceLocation) }
        #expect(
            written == expected,
            "\(String(decoding: written, as: UTF8.self)) != \(String(decoding: expected, as: UTF8.self))",
            sourceLocation: sourceLocation)
    }

    /// Every ASCII control character, the characters JSON escapes, and non-ASCII text.
    static let awkwardStrings: [String] = [
        "", "plain", "quote \" backslash \\ slash / end", "tab\tnew\nline\rreturn\u{8}back\u{C}feed",
        String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) }), "del \u{7F}", "é café cafe\u{301}",
        "emoji 🎭 and \u{2028} \u{2029}", "中文", "</script>", "\u{0}nul",
    ]

    @Test("scalars: integer extremes, floating-point formatting, escaped strings, optionals")
    func scalars() throws {
        let doubles: [Double] = [
            0, -0.0, 1, -1, 0.1, 0.5, 1.5, 100, 1e15, 1e16, 1e21, 1e300, -1e-300, 123456789.125, .pi,
            Double.leastNonzeroMagnitude, Double.greatestFiniteMagnitude, 2.5e-5,
        ]
        let floats: [Float] = [0, 1, 0.1, 1.5, 3.4e38, .leastNonzeroMagnitude, .pi, -2.75]
        for (i, string) in Self.awkwardStrings.enumerated() {
            for (j, double) in doubles.enumerated() {
                let float = floats[(i + j) % floats.count]
                try expectSameBytes(
                    .scalars(
                        JSONScalars(
                            int: [Int.min, Int.max, 0, -7, 42][j % 5], int8: [Int8.min, .max, 0][j % 3],
                            int16: [Int16.min, .max, -1][j % 3], int32: [Int32.min, .max, 10][j % 3],
                            int64: [Int64.min, .max, 1_000_000][j % 3], uint: [UInt.max, 0, 9][j % 3],
                            uint8: [UInt8.max, 0][j % 2], uint16: [UInt16.max, 1][j % 2],
                            uint32: [UInt32.max, 100][j % 2], uint64: [UInt64.max, 0, 10][j % 3],
                            bool: j % 2 == 0, double: double, float: float, string: string,
                            optional: j % 2 == 0 ? nil : string, optionalInt: j % 3 == 0 ? nil : j)))
            }
        }
    }

    @Test("arrays, dictionaries, nested values, enums, Date, Data, URL, Decimal, UUID")
    func shapes() throws {
        let inner = JSONInner(name: "in/ner \"x\"", tags: Self.awkwardStrings, empty: [])
        for i in 0..<8 {
            try expectSameBytes(
                .shapes(
                    JSONShapes(
                        ints: Array(-3...i), strings: Array(Self.awkwardStrings.prefix(i)),
                        doubles: [0.1, 1, -2.5, 1e21, Double(i) / 3], floats: [1, 0.25, Float(i) / 7],
                        bytes: [0, 255, UInt8(i)], matrix: [[], [1], [1, 2, i]],
                        byName: Dictionary(uniqueKeysWithValues: Self.awkwardStrings.enumerated().map { ($1, $0) }),
                        byNumber: [1: "one", -2: "minus two", 10: "ten", 100 + i: "i"],
                        date: Date(timeIntervalSinceReferenceDate: Double(i) * 12_345.678),
                        data: Data((0..<(i * 5)).map { UInt8(truncatingIfNeeded: $0 * 37) }),
                        url: URL(string: "https://example.com/a/b?c=\(i)&d=%20#frag")!,
                        decimal: Decimal(string: "\(i)12345.678901234567890")!, uuid: UUID(),
                        inner: inner, inners: Array(repeating: inner, count: i % 3),
                        optionalInner: i % 2 == 0 ? nil : inner,
                        choices: [.none, .one(i), .pair(label: "l", value: 0.3), .inner(inner)],
                        empty: JSONEmpty(), optionals: [1, nil, i])))
        }
    }

    @Test("keys sort by their UTF-8 bytes, in objects and dictionaries")
    func keyOrder() throws {
        let keys = ["b", "B", "a10", "a2", "a1", "_z", "zé", "ze", "Zed", "é", "", "🎭", "a"]
        try expectSameBytes(.keys(JSONKeys(values: Dictionary(uniqueKeysWithValues: keys.map { ($0, $0) }))))
    }

    @Test("objects with the same keys, canonically equivalent keys and many key sets in a row")
    func keyLayouts() throws {
        // The writer keeps the key order of recent objects: keys equal as `String` but not byte
        // for byte, and key sets seen long ago, must still come out as `JSONEncoder` writes them.
        for keys in [["é", "b"], ["e\u{301}", "b"], ["é", "b"], ["Å", "B"], ["A\u{30A}", "B"], ["Å", "B"]] {
            try expectSameBytes(.keys(JSONKeys(values: Dictionary(uniqueKeysWithValues: keys.map { ($0, $0) }))))
        }
        for round in 0..<3 {
            for n in 0..<40 {
                let keys = (0...(n % 5)).map { "k\($0 * 7 % 5)-\(n)" } + ["shared", "é\(round)"]
                try expectSameBytes(.keys(JSONKeys(values: Dictionary(uniqueKeysWithValues: keys.map { ($0, $0) }))))
            }
        }
    }

    @Test("shapes left to JSONEncoder come out the same")
    func fallbacks() throws {
        for variant in 0..<3 { try expectSameBytes(.odd(JSONOdd(variant: variant)), fast: false) }
        // A container requested twice is one container, as in `JSONEncoder`.
        try expectSameBytes(.odd(JSONOdd(variant: 3)))
    }

    @Test("a number JSON cannot hold throws as JSONEncoder throws")
    func notFinite() throws {
        for value in [Double.nan, .infinity, -.infinity] {
            #expect(throws: EncodingError.self) {
                try codec.encode(.notFinite(JSONNotFinite(value: value)), metadata: EventMetadata())
            }
        }
    }
}
