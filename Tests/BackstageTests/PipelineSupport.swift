import Backstage
import BackstageTestSupport
import Foundation
import Synchronization
import Testing

/// Test bookkeeping behind a lock (BackstageTestSupport).
typealias PipeBox = TestBox

/// Counts something and lets a test await a count without polling.
final class PipeCounter: Sendable {
    private struct State {
        var count = 0
        var waiters: [UUID: (Int, CheckedContinuation<Void, Never>)] = [:]
    }
    private let state = Mutex(State())

    func add(_ n: Int = 1) {
        let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.count += n
            let ids = s.waiters.filter { $0.value.0 <= s.count }.map(\.key)
            return ids.compactMap { s.waiters.removeValue(forKey: $0)?.1 }
        }
        for c in ready { c.resume() }
    }

    var count: Int { state.withLock { $0.count } }

    private func resume(_ id: UUID) {
        state.withLock { $0.waiters.removeValue(forKey: id) }?.1.resume()
    }

    /// Returns once the count reached `target`; throws after `timeout`.
    func wait(for target: Int, timeout: Duration = .seconds(30)) async throws {
        let id = UUID()
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.resume(id)
        }
        await withCheckedContinuation { c in
            let now = state.withLock { s -> Bool in
                if s.count >= target { return true }
                s.waiters[id] = (target, c)
                return false
            }
            if now { c.resume() }
        }
        timer.cancel()
        if count < target { throw PipeTimeout(what: "count \(target) (at \(count))") }
    }
}

struct PipeTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Appends `count` events of type "Tick" spread over `streams` streams (round robin), in appends
/// of `perAppend` events to one stream.
@discardableResult
func appendTicks(
    _ store: any EventStore, count: Int, streams: Int, perAppend: Int = 1, prefix: String = "tick"
) async throws -> [AppendResult] {
    var results: [AppendResult] = []
    var n = 0
    var round = 0
    while n < count {
        let stream = "\(prefix)-\(round % streams)"
        let k = min(perAppend, count - n)
        let events = (0..<k).map { i in EventData(type: "Tick", data: Data(#"{"n":\#(n + i)}"#.utf8)) }
        results.append(try await store.append(events, to: stream, expected: .any, commandID: nil))
        n += k
        round += 1
    }
    return results
}

/// A checkpoint store that checks, at every commit, that every event at or before the new
/// position was handled already, and that commits only move forward.
final class AuditingCheckpointStore: CheckpointStore {
    let inner = InMemoryCheckpointStore()
    let handled: PipeBox<Set<Int64>>
    let commits = PipeBox<[LogPosition]>([])
    let violations = PipeBox<[String]>([])
    let allPositions: PipeBox<[Int64]>

    init(handled: PipeBox<Set<Int64>>, allPositions: [Int64]) {
        self.handled = handled
        self.allPositions = PipeBox(allPositions)
    }

    func checkpoint(_ subscription: String) async throws -> Checkpoint? { try await inner.checkpoint(subscription) }
    func checkpoints() async throws -> [Checkpoint] { try await inner.checkpoints() }
    func delete(_ subscription: String) async throws { try await inner.delete(subscription) }

    func commit(_ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64) async throws {
        let done = handled.value
        let missing = allPositions.value.filter { $0 <= new.position && !done.contains($0) }
        if !missing.isEmpty {
            violations.with { $0.append("commit \(new) while \(missing.prefix(5)) not handled") }
        }
        if let last = commits.value.last, new <= last {
            violations.with { $0.append("commit \(new) after \(last)") }
        }
        commits.with { $0.append(new) }
        try await inner.commit(subscription, expected: expected, new: new, token: token)
    }
}

/// Runs `service` in the background; `stop` ends it gracefully and waits for it.
struct RunningService: Sendable {
    let service: PipelineService
    let task: Task<Void, any Error>

    init(_ service: PipelineService) {
        self.service = service
        self.task = Task { try await service.run() }
    }

    func stop() async throws {
        service.stop()
        try await task.value
    }
}

struct PipeFailure: Error, CustomStringConvertible {
    var position: Int64
    var description: String { "deliberate failure at \(position)" }
}
