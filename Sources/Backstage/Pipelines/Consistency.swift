import Foundation
import Synchronization

/// How long a dispatch waits for read models after its events are stored.
public enum Consistency: Sendable, Hashable {
    /// Return as soon as the events are stored (the default).
    case eventual
    /// Wait until every strongly consistent projection registered with the application has
    /// processed the events.
    case strong
    /// Wait until the named projections have processed the events.
    case projections(Set<String>)
}

/// A dispatch stored its events but the projections it waited for did not catch up in time.
public enum ConsistencyError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The projections had not processed `position` within `timeout`.
    case timeout(position: LogPosition, waitingFor: [String: LogPosition?], timeout: Duration)
    /// A named projection is not registered (no pipeline service runs it).
    case unknownProjection(String, position: LogPosition)

    public var description: String {
        switch self {
        case .timeout(let position, let waiting, let timeout):
            let list = waiting.keys.sorted().map { "\($0) (at \(waiting[$0]!.map { "\($0)" } ?? "nothing yet"))" }
            return
                "the events were stored (up to position \(position)), but projection(s) \(list.joined(separator: ", ")) had not processed them within \(timeout); the command succeeded and must not be retried as a new one"
        case .unknownProjection(let name, let position):
            return
                "the events were stored (up to position \(position)), but no running pipeline has a projection named '\(name)' to wait for"
        }
    }
}

/// The projections strongly consistent dispatches wait for, and how far each has committed.
///
/// A ``BackstageApp`` owns one (``BackstageApp/consistency``); a ``PipelineService`` created with
/// the app registers its projections into it, whether this process leads them or not.
///
/// A wait is answered by the projection's committed checkpoint: first the position this
/// process's own runner published (at once, woken by its commits); when that is behind (another
/// process leads the projection), the checkpoint committed in the projection's checkpoint store
/// for its active version `name@vN`. That one is polled: first after 5 ms, then at an interval
/// that doubles up to 200 ms (`committedPollInterval`), and at once on every local commit.
public final class ConsistencyRegistry: Sendable {
    /// Reads a projection's committed checkpoint.
    package typealias CommittedPosition = @Sendable () async throws -> LogPosition?

    private struct Entry {
        var position: LogPosition?
        var strong: Bool
        var committed: CommittedPosition?
    }
    private let entries = Mutex<[String: Entry]>([:])
    private let changed = Signal()

    /// How often a wait reads the committed checkpoints of projections that are behind: the
    /// first interval, doubled after every read up to the last.
    package static let committedPollInterval: ClosedRange<Duration> = .milliseconds(5) ... .milliseconds(200)

    /// Creates an empty registry.
    public init() {}

    /// Makes a projection known; `strong`: included in ``Consistency/strong``. `committed` reads
    /// its committed checkpoint (nil: only positions published with ``update(_:position:)`` count,
    /// so only a process that runs the projection can wait for it).
    package func register(
        _ name: String, strong: Bool, position: LogPosition?, committed: CommittedPosition? = nil
    ) {
        entries.withLock { $0[name] = Entry(position: position, strong: strong, committed: committed) }
        changed.signal()
    }

    /// Makes `projection` known by its committed checkpoint (of its active version), so a
    /// process that does not run it, or does not lead it, can wait for it.
    /// Included in ``Consistency/strong`` when its options say it is strongly consistent.
    public func register(_ projection: any Projection) {
        register(
            projection.name, strong: projection.options.stronglyConsistent, position: nil,
            committed: Self.committedPosition(of: projection))
    }

    /// Reads the committed checkpoint of the active version of `projection`, remembering the
    /// version until its checkpoint disappears (a rebuild activated another one).
    static func committedPosition(of projection: any Projection) -> CommittedPosition {
        let known = Mutex<Int?>(nil)
        return {
            let cached = known.withLock { $0 }
            let version: Int
            if let cached { version = cached } else { version = try await projection.activeVersion() }
            known.withLock { $0 = version }
            if let found = try await committedProjectionPosition(projection, version: version) {
                return found
            }
            guard cached != nil else { return nil }
            let active = try await projection.activeVersion()
            known.withLock { $0 = active }
            guard active != version else { return nil }
            return try await committedProjectionPosition(projection, version: active)
        }
    }

    /// Forgets a projection.
    package func unregister(_ name: String) {
        _ = entries.withLock { $0.removeValue(forKey: name) }
        changed.signal()
    }

    /// Publishes the committed checkpoint of a projection.
    package func update(_ name: String, position: LogPosition) {
        entries.withLock { $0[name]?.position = position }
        changed.signal()
    }

    /// The latest position known for a projection (published, or read from its checkpoint store
    /// by a wait).
    package func position(of name: String) -> LogPosition? {
        entries.withLock { $0[name]?.position }
    }

    /// The registered projections' names.
    public var names: [String] { entries.withLock { $0.keys.sorted() } }

    /// Waits until the projections named by `consistency` have processed `position`: published by
    /// this process, or committed by whichever process leads them (polled, see the type's notes).
    /// - Throws: ``ConsistencyError`` after `timeout`, or at once for an unknown name.
    public func wait(for consistency: Consistency, position: LogPosition, timeout: Duration)
        async throws(ConsistencyError)
    {
        let deadline = ContinuousClock.now + timeout
        var interval = Self.committedPollInterval.lowerBound
        var nextRead = ContinuousClock.now + interval  // a local commit usually comes first
        while true {
            let (behind, readers) = try entries.withLock {
                s throws(ConsistencyError) -> ([String: LogPosition?], [String: CommittedPosition]) in
                let names: [String]
                switch consistency {
                case .eventual: return ([:], [:])
                case .strong: names = s.filter(\.value.strong).map(\.key)
                case .projections(let set):
                    for name in set where s[name] == nil { throw .unknownProjection(name, position: position) }
                    names = Array(set)
                }
                var behind: [String: LogPosition?] = [:]
                var readers: [String: CommittedPosition] = [:]
                for name in names {
                    let p = s[name]?.position
                    if p == nil || p! < position {
                        behind[name] = .some(p)
                        if let read = s[name]?.committed { readers[name] = read }
                    }
                }
                return (behind, readers)
            }
            if behind.isEmpty { return }
            var still = behind
            if !readers.isEmpty, ContinuousClock.now >= nextRead {
                for (name, read) in readers {
                    // A failed read counts as "not yet": the wait ends at its deadline at worst.
                    guard let committed = try? await read() else { continue }
                    raise(name, to: committed)
                    if committed >= position { still[name] = nil } else { still[name] = .some(committed) }
                }
                nextRead = ContinuousClock.now + interval
                interval = min(interval * 2, Self.committedPollInterval.upperBound)
            }
            if still.isEmpty { return }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero { throw .timeout(position: position, waitingFor: still, timeout: timeout) }
            let wake = readers.isEmpty ? remaining : min(remaining, max(nextRead - ContinuousClock.now, .zero))
            await changed.wait(timeout: wake)
        }
    }

    /// Records a committed checkpoint read from the store, unless a later one is known.
    private func raise(_ name: String, to committed: LogPosition) {
        entries.withLock { s in
            guard let known = s[name], known.position.map({ $0 < committed }) ?? true else { return }
            s[name]?.position = committed
        }
    }
}

extension DispatchOptions {
    /// Options that wait for read models: `consistency` within `timeout`.
    public init(
        consistency: Consistency, timeout: Duration = .seconds(10), commandID: UUID? = nil,
        correlationID: UUID? = nil, causationID: UUID? = nil, fields: [String: String] = [:]
    ) {
        self.init(commandID: commandID, correlationID: correlationID, causationID: causationID, fields: fields)
        self.consistency = consistency
        self.consistencyTimeout = timeout
    }
}

extension BackstageApp {
    /// Waits for the projections `options` asks for after a dispatch stored `recorded`.
    func awaitConsistency(_ options: DispatchOptions, recorded: [RecordedEvent]) async throws {
        guard options.consistency != .eventual, let last = recorded.map(\.logPosition).max() else { return }
        try await consistency.wait(for: options.consistency, position: last, timeout: options.consistencyTimeout)
    }
}
