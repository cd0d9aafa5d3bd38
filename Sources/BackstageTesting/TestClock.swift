import Backstage
import Foundation
import Synchronization

/// A `SchedulerClock` that only moves when a test advances it: scheduled commands come due
/// without waiting for the real hold time.
///
/// ```swift
/// let clock = TestClock()
/// let scheduler = CommandScheduler(app: app, store: processes, commands: catalog, clock: clock)
/// clock.advance(by: .seconds(15 * 60))   // the reservation's hold time has passed
/// ```
public final class TestClock: SchedulerClock {
    private struct State {
        var now: Date
        var sleepers: [UInt64: (Date, CheckedContinuation<Void, any Error>)] = [:]
        var next: UInt64 = 0
    }
    private let state: Mutex<State>

    /// A clock standing at `now` (the real current time by default, so events recorded by a real
    /// store line up with it).
    public init(now: Date = Date()) {
        state = Mutex(State(now: now))
    }

    /// The clock's time.
    public func now() -> Date { state.withLock { $0.now } }

    /// Moves the clock forward by `duration` and wakes every sleeper whose deadline passed.
    public func advance(by duration: Duration) {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        advance(to: now().addingTimeInterval(seconds))
    }

    /// Moves the clock to `date` (never backwards) and wakes every sleeper whose deadline passed.
    public func advance(to date: Date) {
        let woken = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
            s.now = max(s.now, date)
            let due = s.sleepers.filter { $0.value.0 <= s.now }
            for id in due.keys { s.sleepers[id] = nil }
            return due.values.map(\.1)
        }
        for c in woken { c.resume() }
    }

    /// Returns when the clock has been advanced to `deadline`; throws `CancellationError` when cancelled.
    public func sleep(until deadline: Date) async throws {
        let id = state.withLock { s -> UInt64 in
            s.next += 1
            return s.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let result = state.withLock { s -> Result<Void, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if deadline <= s.now { return .success(()) }
                    s.sleepers[id] = (deadline, c)
                    return nil
                }
                if let result { c.resume(with: result) }
            }
        } onCancel: {
            state.withLock { $0.sleepers.removeValue(forKey: id) }?.1.resume(throwing: CancellationError())
        }
    }
}
