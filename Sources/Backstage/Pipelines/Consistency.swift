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

/// Where running projections publish how far they are, so dispatches can wait for them.
///
/// A ``BackstageApp`` owns one (``BackstageApp/projections``); a ``PipelineService`` created with
/// the app registers its projections into it.
public final class ConsistencyRegistry: Sendable {
    private struct Entry {
        var position: LogPosition?
        var strong: Bool
    }
    private let entries = Mutex<[String: Entry]>([:])
    private let changed = Signal()

    /// Creates an empty registry.
    public init() {}

    /// Makes a projection known; `strong`: included in ``Consistency/strong``.
    public func register(_ name: String, strong: Bool, position: LogPosition?) {
        entries.withLock { $0[name] = Entry(position: position, strong: strong) }
        changed.signal()
    }

    /// Forgets a projection.
    public func unregister(_ name: String) {
        _ = entries.withLock { $0.removeValue(forKey: name) }
        changed.signal()
    }

    /// Publishes the committed checkpoint of a projection.
    public func update(_ name: String, position: LogPosition) {
        entries.withLock { $0[name]?.position = position }
        changed.signal()
    }

    /// The published position of a projection.
    public func position(of name: String) -> LogPosition? {
        entries.withLock { $0[name]?.position }
    }

    /// The registered projections' names.
    public var names: [String] { entries.withLock { $0.keys.sorted() } }

    /// Waits until the projections named by `consistency` have processed `position`.
    /// - Throws: ``ConsistencyError`` after `timeout`, or at once for an unknown name.
    public func wait(for consistency: Consistency, position: LogPosition, timeout: Duration)
        async throws(ConsistencyError)
    {
        let deadline = ContinuousClock.now + timeout
        while true {
            let behind = try entries.withLock { s throws(ConsistencyError) -> [String: LogPosition?] in
                let names: [String]
                switch consistency {
                case .eventual: return [:]
                case .strong: names = s.filter(\.value.strong).map(\.key)
                case .projections(let set):
                    for name in set where s[name] == nil { throw .unknownProjection(name, position: position) }
                    names = Array(set)
                }
                var behind: [String: LogPosition?] = [:]
                for name in names {
                    let p = s[name]?.position
                    if p == nil || p! < position { behind[name] = .some(p) }
                }
                return behind
            }
            if behind.isEmpty { return }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero { throw .timeout(position: position, waitingFor: behind, timeout: timeout) }
            await changed.wait(timeout: remaining)
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
        try await projections.wait(for: options.consistency, position: last, timeout: options.consistencyTimeout)
    }
}
