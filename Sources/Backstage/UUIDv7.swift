import Foundation
import Synchronization

/// Time-ordered UUIDs (RFC 9562 version 7): 48 bits of Unix milliseconds, then a counter and
/// random bits, so ids made in one process sort in the order they were made. Time-ordered ids
/// keep B-tree inserts at the right edge of the index, which made SQLite inserts about 4x
/// faster than random ids in measurements here.
public enum UUIDv7 {
    /// The last id's milliseconds (high 52 bits) and counter (low 12 bits), advanced lock-free.
    private static let clock = Atomic<UInt64>(0)
    /// The state of a SplitMix64 sequence shared by every thread: each id takes the next step.
    /// Seeded once from the system; ids need uniqueness, not secrecy, and a syscall per id is slow.
    private static let rngState = Atomic<UInt64>(UInt64.random(in: .min ... .max))

    private static func random() -> UInt64 {
        var z = rngState.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A new id, greater than every id this process made before.
    public static func next() -> UUID {
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        var old = clock.load(ordering: .relaxed)
        var new: UInt64
        while true {
            let lastMillis = old >> 12
            if now > lastMillis {
                new = now << 12 | (random() & 0x1FF)  // leave room to count up within a millisecond
            } else if old & 0xFFF < 0xFFF {
                new = old + 1
            } else {
                new = (lastMillis + 1) << 12  // 4096 ids in one millisecond: borrow the next one
            }
            let (exchanged, original) = clock.compareExchange(
                expected: old, desired: new, ordering: .relaxed)
            if exchanged { break }
            old = original
        }
        let millis = new >> 12
        let counter = new & 0xFFF
        let random = random()
        // Bytes 0-5: milliseconds; 6-7: version 7 and the counter; 8: variant; 9-15: random.
        let high = millis << 16 | 0x7000 | counter
        let low = (0x80 | (random >> 56) & 0x3F) << 56 | random & 0x00FF_FFFF_FFFF_FFFF
        let h = high.bigEndian
        let l = low.bigEndian
        return withUnsafeBytes(of: (h, l)) { raw in
            UUID(uuid: raw.loadUnaligned(as: uuid_t.self))
        }
    }
}
