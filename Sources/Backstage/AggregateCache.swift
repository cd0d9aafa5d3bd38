import DequeModule
import Foundation
import Synchronization

class CacheEntry: @unchecked Sendable {
    // Guarded by the cache's mutex: use count, the entry's lock and its waiters, recency, and the
    // links of the recency list. The links do not retain: an entry is owned by the cache's
    // dictionary and unlinked before it leaves it.
    var users = 0
    var locked = false
    var waiters: Deque<CheckedContinuation<Void, Never>> = []
    var lastUsed: ContinuousClock.Instant = .now
    var key = ExactString("")
    // Unmanaged: following a link neither retains nor releases the entry it leads to.
    var older: Unmanaged<CacheEntry>?
    var newer: Unmanaged<CacheEntry>?
}

/// A hydrated aggregate. Its fields are only touched while the entry is held (between
/// ``AggregateCache/enter(_:as:held:)`` (and ``AggregateCache/wait(for:)``) and ``AggregateCache/release(_:)``).
final class AggregateEntry<A: Aggregate>: CacheEntry, @unchecked Sendable {
    var state = A()
    var version: Int64 = 0
    var loaded = false
    var lastSnapshotVersion: Int64 = 0
}

/// Hydrated aggregates, bounded by count and idle time, evicted least recently used first.
/// Entries in use are never evicted, so two commands for one aggregate in one process always
/// share an entry and run one at a time: an entry is held by one command at a time, the others
/// wait first come, first served, without blocking a thread. Every operation is O(1) under one
/// mutex: a recency list threads the entries.
/// Stream ids are keys byte for byte (``ExactString``), as in the stores: two canonically
/// equivalent spellings of an id are two aggregates.
final class AggregateCache: Sendable {
    private struct State {
        var entries: [ExactString: CacheEntry] = [:]
        var oldest: Unmanaged<CacheEntry>?
        var newest: Unmanaged<CacheEntry>?

        mutating func unlink(_ e: CacheEntry) {
            let (older, newer) = (e.older, e.newer)
            if let older { older._withUnsafeGuaranteedRef { $0.newer = newer } } else { oldest = newer }
            if let newer { newer._withUnsafeGuaranteedRef { $0.older = older } } else { newest = older }
            e.older = nil
            e.newer = nil
        }

        mutating func pushNewest(_ e: CacheEntry) {
            let link = Unmanaged.passUnretained(e)
            e.older = newest
            if let newest { newest._withUnsafeGuaranteedRef { $0.newer = link } } else { oldest = link }
            newest = link
        }

        mutating func remove(_ e: CacheEntry) {
            unlink(e)
            entries[e.key] = nil
        }
    }
    private let state = Mutex(State())
    let capacity: Int
    let idleTimeout: Duration

    init(capacity: Int, idleTimeout: Duration) {
        self.capacity = max(capacity, 0)
        self.idleTimeout = idleTimeout
    }

    var count: Int { state.withLock { $0.entries.count } }

    /// The entry of `stream`, counted as used; `held` is set when the caller holds it now,
    /// otherwise the caller must ``wait(for:)`` it (it is handed over after the commands that
    /// wait for it before). Pair with ``release(_:)`` either way.
    func enter<A: Aggregate>(_ stream: String, as type: A.Type, held: inout Bool) -> AggregateEntry<A> {
        let now = ContinuousClock.now
        let key = ExactString(stream)
        // Not a tuple result: a generic tuple's metadata is looked up at run time on every call.
        var acquired = false
        let entry = state.withLock { s -> AggregateEntry<A> in
            let entry: AggregateEntry<A>
            if let existing = s.entries[key], let typed = existing as? AggregateEntry<A> {
                entry = typed
                s.unlink(entry)
            } else {
                if let other = s.entries[key] { s.remove(other) }
                entry = AggregateEntry<A>()
                entry.key = key
                s.entries[key] = entry
            }
            entry.users += 1
            entry.lastUsed = now
            s.pushNewest(entry)
            evict(&s, now: now)
            if !entry.locked {
                entry.locked = true
                acquired = true
            }
            return entry
        }
        held = acquired
        return entry
    }

    /// Waits until `entry` (entered, not held) is handed to the caller by ``release(_:)``.
    func wait(for entry: CacheEntry) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { _ -> Bool in
                if !entry.locked {
                    entry.locked = true
                    return true
                }
                entry.waiters.append(c)
                return false
            }
            if acquired { c.resume() }
        }
    }

    /// Hands the entry to the next command waiting for it, or frees it; an entry nobody uses is
    /// dropped when the cache is over capacity (or disabled).
    func release(_ entry: CacheEntry) {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            entry.users -= 1
            if let next = entry.waiters.popFirst() { return next }
            entry.locked = false
            if entry.users == 0, capacity == 0 || s.entries.count > capacity, s.entries[entry.key] === entry {
                s.remove(entry)
            }
            return nil
        }
        next?.resume()
    }

    /// Drops the least recently used idle entries while over capacity or past the idle timeout.
    /// Entries in use are skipped (there are at most as many as commands in flight).
    private func evict(_ s: inout State, now: ContinuousClock.Instant) {
        var candidate = s.oldest
        while let link = candidate {
            let e = link.takeUnretainedValue()
            let over = s.entries.count > capacity
            let expired = now - e.lastUsed >= idleTimeout
            if !over && !expired { return }
            candidate = e.newer
            if e.users == 0 { s.remove(e) } else if !over { return }
        }
    }
}
