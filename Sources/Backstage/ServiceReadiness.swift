import Synchronization

/// The lifecycle of a store that is a `Service`: operations wait until its `run()` has prepared it
/// (connected, migrated), fail once it has stopped, and `close()` ends `run()`. Backend plumbing.
package final class ServiceReadiness: Sendable {
    private enum Phase {
        case idle
        case starting
        case ready
        case failed(any Error)
        case closed
    }

    private struct State {
        var phase = Phase.idle
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var next: UInt64 = 0
    }

    private let state = Mutex(State())
    private let closedError: any Error & Sendable
    /// Signalled by ``close()``: `run()` waits on it next to graceful shutdown and cancellation.
    package let stopRequested = Signal(sticky: true)

    /// `closedError` is what operations get once the store has stopped.
    package init(closedError: any Error & Sendable) {
        self.closedError = closedError
    }

    /// Marks `run()` as started; false when it already ran or the store was closed.
    package func start() -> Bool {
        state.withLock { s in
            guard case .idle = s.phase else { return false }
            s.phase = .starting
            return true
        }
    }

    /// Whether operations may run now.
    package var isReady: Bool {
        state.withLock { s in
            if case .ready = s.phase { return true }
            return false
        }
    }

    /// Returns once the store is ready; throws the error that stopped its preparation, the
    /// closed error once it has stopped, or `CancellationError`.
    package func waitUntilReady() async throws {
        if isReady { return }
        let id = state.withLock { s -> UInt64 in
            s.next += 1
            return s.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome = state.withLock { s -> Result<Void, any Error>? in
                    switch s.phase {
                    case .ready: return .success(())
                    case .failed(let error): return .failure(error)
                    case .closed: return .failure(closedError)
                    case .idle, .starting:
                        if Task.isCancelled { return .failure(CancellationError()) }
                        s.waiters[id] = continuation
                        return nil
                    }
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }

    /// The store is prepared: wakes every waiter.
    package func markReady() {
        finish(.ready, .success(()))
    }

    /// Preparing the store failed: every waiter gets `error`.
    package func fail(_ error: any Error) {
        finish(.failed(error), .failure(error))
    }

    /// The store stopped (or will not start): waiters and later operations get the closed error,
    /// and `run()` ends.
    package func close() {
        let alreadyFailed = state.withLock { s -> Bool in
            if case .failed = s.phase { return true }
            return false
        }
        if !alreadyFailed { finish(.closed, .failure(closedError)) }
        stopRequested.signal()
    }

    private func finish(_ phase: Phase, _ outcome: Result<Void, any Error>) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
            if case .closed = s.phase { return [] }
            s.phase = phase
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        for waiter in waiters { waiter.resume(with: outcome) }
    }
}
