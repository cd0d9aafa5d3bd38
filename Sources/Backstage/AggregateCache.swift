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
        if state.withLock({ s in s.locked ? false : { s.locked = true; return true }() }) { return }
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
    // Guarded by the cache's mutex.
    var users = 0
    var lastUsed: ContinuousClock.Instant = .now
}

/// A hydrated aggregate. Its fields are only touched while `lock` is held.
final class AggregateEntry<A: Aggregate>: CacheEntry, @unchecked Sendable {
    var state = A()
    var version: Int64 = 0
    var loaded = false
    var lastSnapshotVersion: Int64 = 0
}

/// Hydrated aggregates, bounded by count and idle time. Entries in use are never evicted, so two
/// commands for one aggregate in one process always share an entry and run one at a time.
final class AggregateCache: Sendable {
    private struct State {
        var entries: [String: CacheEntry] = [:]
        var lastSweep: ContinuousClock.Instant = .now
    }
    private let state = Mutex(State())
    let capacity: Int
    let idleTimeout: Duration

    init(capacity: Int, idleTimeout: Duration) {
        self.capacity = max(capacity, 0)
        self.idleTimeout = idleTimeout
    }

    var count: Int { state.withLock { $0.entries.count } }

    /// The entry of `stream`, marked in use; pair with ``release(_:)``.
    func acquire<A: Aggregate>(_ stream: String, as type: A.Type) -> AggregateEntry<A> {
        let now = ContinuousClock.now
        return state.withLock { s in
            let entry: AggregateEntry<A>
            if let existing = s.entries[stream] as? AggregateEntry<A> {
                entry = existing
            } else {
                entry = AggregateEntry<A>()
                s.entries[stream] = entry
            }
            entry.users += 1
            entry.lastUsed = now
            if s.entries.count > capacity + capacity / 8 + 1 || now - s.lastSweep > idleTimeout / 4 {
                sweep(&s, now: now)
            }
            return entry
        }
    }

    /// Marks the entry no longer in use; when the cache is disabled it is dropped.
    func release(_ stream: String, _ entry: CacheEntry) {
        state.withLock { s in
            entry.users -= 1
            if capacity == 0, entry.users == 0, s.entries[stream] === entry { s.entries[stream] = nil }
        }
    }

    /// Forgets `stream` (when it is not in use), so the next command reloads it.
    func invalidate(_ stream: String) {
        state.withLock { s in
            if let e = s.entries[stream], e.users == 0 { s.entries[stream] = nil }
        }
    }

    private func sweep(_ s: inout State, now: ContinuousClock.Instant) {
        s.lastSweep = now
        s.entries = s.entries.filter { $0.value.users > 0 || now - $0.value.lastUsed < idleTimeout }
        guard s.entries.count > capacity else { return }
        let idle = s.entries.filter { $0.value.users == 0 }.sorted { $0.value.lastUsed < $1.value.lastUsed }
        for (stream, _) in idle.prefix(s.entries.count - capacity) { s.entries[stream] = nil }
    }
}
