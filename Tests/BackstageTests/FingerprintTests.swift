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
