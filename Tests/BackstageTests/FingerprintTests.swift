import Backstage
import Foundation
import Testing

@Suite("Append fingerprint")
struct FingerprintTests {
    // Fingerprints are stored with every command id (SQLite, PostgreSQL): the digest of the same
    // events must never change between versions, or retries of stored commands would conflict.
    // The expected value is FNV-1a 64 over (type, schema version, data) per event, computed
    // independently of this code.
    @Test("the digest of known events is stable")
    func stableDigest() {
        let events = [
            EventData(type: "Deposited", schemaVersion: 1, data: Data(#"{"account":"a-1","amount":10}"#.utf8)),
            EventData(
                type: "Withdrawn", schemaVersion: 2,
                data: Data(Array(repeating: Array(0...255) as [UInt8], count: 3).joined())),
        ]
        #expect(appendFingerprint(events) == "2:55135630a70108e4")
    }

    @Test("event ids do not change the digest; data does")
    func idsIgnored() {
        let a = EventData(type: "T", data: Data("x".utf8))
        var b = a
        b.id = UUID()
        #expect(appendFingerprint([a]) == appendFingerprint([b]))
        b.data = Data("y".utf8)
        #expect(appendFingerprint([a]) != appendFingerprint([b]))
    }
}

@Suite("Deterministic encoding")
struct DeterministicEncodingTests {
    struct Booked: Event, Equatable {
        static let typeName = "Booked"
        var show: String
        var seat: String
        var price: Int
        var buyer: String
        var notes: [String: String]
    }

    enum Booking: EventFamily {
        case booked(Booked)
        static let members: [EventMember<Booking>] = [.init(Booked.self, Booking.booked)]
        var event: any Event {
            switch self {
            case .booked(let e): e
            }
        }
    }

    @Test("many encodings of one multi-field event are byte-identical, so are their fingerprints")
    func sameBytes() throws {
        let value = Booking.booked(
            Booked(show: "s-1", seat: "A12", price: 4200, buyer: "ana", notes: ["z": "1", "a": "2", "m": "3"]))
        var seen = Set<Data>()
        var prints = Set<String>()
        for _ in 0..<200 {
            // A fresh codec each time, as a fresh process would have.
            let event = try EventCodec<Booking>().encode(value, metadata: EventMetadata())
            seen.insert(event.data)
            prints.insert(appendFingerprint([event]))
        }
        #expect(seen.count == 1, "\(seen.map { String(decoding: $0, as: UTF8.self) })")
        #expect(prints.count == 1)
        #expect(
            seen.first.map { String(decoding: $0, as: UTF8.self) }
                == #"{"buyer":"ana","notes":{"a":"2","m":"3","z":"1"},"price":4200,"seat":"A12","show":"s-1"}"#)
    }
}
