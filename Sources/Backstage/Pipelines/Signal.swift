import DequeModule
import Foundation
import Synchronization

/// A wake-up for async waiters. `signal()` wakes every current waiter; when nobody waits, the next
/// `wait` returns at once (one pending wake-up is kept). A sticky signal, once signalled, never
/// blocks again (a latch).
package final class Signal: Sendable {
    private struct State {
        var pending = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var next: UInt64 = 0
    }
    private let state = Mutex(State())
    private let sticky: Bool

    package init(sticky: Bool = false) {
        self.sticky = sticky
    }

    package func signal() {
        let woken = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            if s.waiters.isEmpty || sticky { s.pending = true }
            let all = Array(s.waiters.values)
            s.waiters.removeAll()
            return all
        }
        for continuation in woken { continuation.resume() }
    }

    /// Returns after a signal, after `timeout` (nil: no timeout), or when the task is cancelled.
    package func wait(timeout: Duration? = nil) async {
        guard let timeout else { return await waitForSignal() }
        if timeout <= .zero { return }
        // The timeout races the signal in a task group: whichever ends first cancels the other.
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitForSignal() }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Returns after a signal or when the task is cancelled.
    private func waitForSignal() async {
        let id = state.withLock { s -> UInt64 in
            s.next += 1
            return s.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let registered = state.withLock { s -> Bool in
                    if s.pending {
                        if !sticky { s.pending = false }
                        return false
                    }
                    // Checked under the lock: a cancellation either happened before (seen here) or
                    // finds the waiter registered.
                    if Task.isCancelled { return false }
                    s.waiters[id] = c
                    return true
                }
                if !registered { c.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}

/// One unit of work for a pipeline worker.
enum WorkItem: Sendable {
    /// An event and its slot in the watermark tracker.
    case event(RecordedEvent, slot: UInt64)
    /// Nothing to handle: wake up and check whether the checkpoint can move.
    case tick
}

/// A worker's queue. It has no bound of its own: the source only reads while the subscription
/// holds fewer than `maxInFlight` events, which bounds every queue.
final class WorkQueue: Sendable {
    private struct State {
        var items: Deque<WorkItem> = []
        var closed = false
    }
    private let state = Mutex(State())
    private let ready = Signal()

    func push(_ items: [WorkItem]) {
        state.withLock { $0.items.append(contentsOf: items) }
        ready.signal()
    }

    /// No more pushes; `take` returns nil once the queue is empty.
    func close() {
        state.withLock { $0.closed = true }
        ready.signal()
    }

    /// Drops everything queued; returns the number of items dropped.
    @discardableResult
    func discardAll() -> Int {
        state.withLock { s in
            let n = s.items.count
            s.items.removeAll()
            s.closed = true
            return n
        }
    }

    private func drain(into batch: inout [WorkItem], max: Int) -> Bool {
        state.withLock { s in
            while batch.count < max, let item = s.items.popFirst() { batch.append(item) }
            return s.closed
        }
    }

    /// Up to `max` items: waits for the first, then up to `timeout` for the batch to fill.
    /// Nil when the queue is closed and empty.
    func take(max: Int, timeout: Duration) async -> [WorkItem]? {
        var batch: [WorkItem] = []
        while true {
            let closed = drain(into: &batch, max: max)
            if !batch.isEmpty { break }
            if closed { return nil }
            await ready.wait()
        }
        if batch.count < max && timeout > .zero {
            let deadline = ContinuousClock.now + timeout
            while batch.count < max {
                let remaining = deadline - ContinuousClock.now
                if remaining <= .zero { break }
                await ready.wait(timeout: remaining)
                if drain(into: &batch, max: max) { break }
            }
        }
        return batch
    }
}

/// The low watermark of a subscription: events (and end-of-log markers) in delivery order, each
/// done or not. The watermark is the position of the last entry such that it and every entry
/// before it are done; it never passes an event that failed or is in flight.
struct WatermarkTracker {
    private struct Entry {
        var position: LogPosition
        var recordedAt: Date?
        var done: Bool
    }
    private var entries: Deque<Entry> = []
    private var firstSlot: UInt64 = 0
    /// Everything up to here is done (nil: nothing yet, and no checkpoint).
    private(set) var watermark: LogPosition?

    init(start: LogPosition?) {
        watermark = start
    }

    /// Entries held (events read and not yet retired, plus markers).
    var count: Int { entries.count }

    /// When the oldest held event was recorded.
    var oldestRecordedAt: Date? { entries.first(where: { !$0.done })?.recordedAt }

    /// Registers the next event in delivery order; returns its slot.
    mutating func register(_ event: RecordedEvent) -> UInt64 {
        entries.append(Entry(position: event.logPosition, recordedAt: event.recordedAt, done: false))
        return firstSlot + UInt64(entries.count - 1)
    }

    /// Registers "every matching event up to `position` was delivered": done at once.
    mutating func registerMarker(_ position: LogPosition) {
        entries.append(Entry(position: position, recordedAt: nil, done: true))
        advance()
    }

    /// Marks the event in `slot` done and moves the watermark over the done prefix.
    mutating func complete(_ slot: UInt64) {
        guard slot >= firstSlot else { return }
        let index = Int(slot - firstSlot)
        guard index < entries.count else { return }
        entries[index].done = true
        advance()
    }

    private mutating func advance() {
        while let first = entries.first, first.done {
            if watermark == nil || first.position > watermark! { watermark = first.position }
            entries.removeFirst()
            firstSlot += 1
        }
    }
}
