import Foundation

extension Process {
    /// Waits until the process has exited and returns its termination status, without blocking a
    /// thread of Swift's cooperative pool.
    ///
    /// `waitUntilExit()` blocks the calling thread; the pool has one thread per core, so on a small
    /// machine a few tests waiting for child processes that way can starve the tasks that read the
    /// children's output, and a child blocked on a full pipe then never exits. This polls every
    /// 10 ms instead (and blocks only when the waiting task is cancelled).
    @discardableResult
    public func exited() async -> Int32 {
        while isRunning {
            do {
                try await Task.sleep(for: .milliseconds(10))
            } catch {
                break
            }
        }
        waitUntilExit()
        return terminationStatus
    }
}

/// Runs blocking work, such as reading a child process's pipe to its end, on a thread of its own
/// rather than on Swift's cooperative pool (see ``Foundation/Process/exited()``).
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}
