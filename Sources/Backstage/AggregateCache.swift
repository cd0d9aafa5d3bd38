import DequeModule
import Foundation
import Synchronization

/// A lock that async code waits on without blocking a thread; waiters are served first come,
/// first served.
final class AsyncLock: Sendable {
    private struct State {
        var locked = false
        var waiters: Deque<CheckedContinuation<Void, Never>> = []
    }
    private let state = Mutex(State())

    func lock() async {
        if state.withLock({ s in
            s.locked
                ? false
                : {
                    s.locked = true
                    return true
                }()
        }) {
            return
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { s -> Bool in
                if !s.locked {
                    s.locked = true
                    return true
                }
                s.waiters.append(c)
                return false
            }
            if acquired { c.resume() }
        }
    }

    /// Hands the lock to the next waiter, or releases it.
    func unlock() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let next = s.waiters.popFirst() { return next }
            s.locked = false
            return nil
        }
        next?.resume()
    }
}

class CacheEntry: @unchecked Sendable {
    let lock = AsyncLock()
    // Guarded by the cache's mutex: use count, recency, and the links of the recency list.
    var users = 0
    var lastUsed: ContinuousClock.Instant = .now
    var key = ExactString("")
    var older: CacheEntry?
    var newer: CacheEntry?
}

/// A hydrated aggregate. Its fields are only touched while `lock` is held.
final class AggregateEntry<A: Aggregate>: CacheEntry, @unchecked Sendable {
    var state = A()
    var version: Int64 = 0
    var loaded = false
    var lastSnapshotVersion: Int64 = 0
}

/// Hydrated aggregates, bounded by count and idle time, evicted least recently used first.
/// Entries in use are never evicted, so two commands for one aggregate in one process always
/// share an entry and run one at a time. Every operation is O(1): a recency list threads the entries.
/// Stream ids are keys byte for byte (``ExactString``), as in the stores: two canonically
/// equivalent spellings of an id are two aggregates.
final class AggregateCache: Sendable {
    private struct State {
        var entries: [ExactString: CacheEntry] = [:]
        var oldest: CacheEntry?
        var newest: CacheEntry?

        mutating func unlink(_ e: CacheEntry) {
            if let older = e.older { older.newer = e.newer } else { oldest = e.newer }
            if let newer = e.newer { newer.older = e.older } else { newest = e.older }
            e.older = nil
            e.newer = nil
        }

        mutating func pushNewest(_ e: CacheEntry) {
            e.older = newest
            newest?.newer = e
            newest = e
            if oldest == nil { oldest = e }
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

    /// The entry of `stream`, marked in use; pair with ``release(_:_:)``.
    func acquire<A: Aggregate>(_ stream: String, as type: A.Type) -> AggregateEntry<A> {
        let now = ContinuousClock.now
        let key = ExactString(stream)
        return state.withLock { s in
            let entry: AggregateEntry<A>
            if let existing = s.entries[key] as? AggregateEntry<A> {
                entry = existing
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
            return entry
        }
    }

    /// Marks the entry no longer in use; when the cache is disabled it is dropped.
    func release(_ stream: String, _ entry: CacheEntry) {
        state.withLock { s in
            entry.users -= 1
            if entry.users == 0, s.entries[ExactString(stream)] === entry, capacity == 0 || s.entries.count > capacity {
                s.remove(entry)
            }
        }
    }

    /// Drops the least recently used idle entries while over capacity or past the idle timeout.
    /// Entries in use are skipped (there are at most as many as commands in flight).
    private func evict(_ s: inout State, now: ContinuousClock.Instant) {
        var candidate = s.oldest
        while let e = candidate {
            let over = s.entries.count > capacity
            let expired = now - e.lastUsed >= idleTimeout
            if !over && !expired { return }
            candidate = e.newer
            if e.users == 0 { s.remove(e) } else if !over { return }
        }
    }
}
