import Backstage
import Foundation

/// Given/when/then tests of a `ProcessManager`, with no store involved: given past events,
/// when an event arrives, then these commands are dispatched, scheduled or cancelled.
///
/// ```swift
/// @Test func payingCancelsTheRelease() throws {
///     try ProcessScenario(ReservationProcess(holdTime: .seconds(900)))
///         .given([.seatsReserved(SeatsReserved(showID: "s1", reservationID: "r1", seats: 2))])
///         .when(.reservationPaid(ReservationPaid(showID: "s1", reservationID: "r1")))
///         .thenCancelled(["release-r1"])
///         .thenStopped("r1")
/// }
/// ```
///
/// Failures throw ``ScenarioFailure`` with the given events, the event, and the expected and
/// actual commands one per line, the first difference marked by `>`. Commands are compared in
/// their stored form (name and sorted-keys JSON), so command types need not be `Equatable`.
public struct ProcessScenario<Manager: ProcessManager>: Sendable {
    /// The process manager under test.
    public let manager: Manager
    /// The given events, in order.
    public let events: [Manager.Family]
    /// When the events are recorded.
    public let recordedAt: Date

    /// Starts a scenario for `manager`; events are recorded at `recordedAt`.
    public init(_ manager: Manager, recordedAt: Date = Date(timeIntervalSince1970: 1_800_000_000)) {
        self.manager = manager
        self.events = []
        self.recordedAt = recordedAt
    }

    private init(_ manager: Manager, events: [Manager.Family], recordedAt: Date) {
        self.manager = manager
        self.events = events
        self.recordedAt = recordedAt
    }

    /// Adds past events (their commands are not checked).
    public func given(_ events: [Manager.Family]) -> Self {
        ProcessScenario(manager, events: self.events + events, recordedAt: recordedAt)
    }

    /// Delivers `event` after the given ones and records what the process manager asked for.
    /// - Throws: what the process manager threw, or a `CodecError` when an event does not encode.
    public func when(_ event: Manager.Family) throws -> ProcessOutcome<Manager> {
        var states: [String: Manager.State] = [:]
        var position: Int64 = 0
        var result: (actions: [ProcessAction], key: String?) = ([], nil)
        for (i, value) in (events + [event]).enumerated() {
            position += 1
            let envelope = try envelope(value, position: position)
            var key: String?
            var stops = false
            switch manager.route(envelope) {
            case .start(let k):
                key = k
                if states[k] == nil { states[k] = manager.initialState }
            case .continue(let k): key = k
            case .stop(let k):
                key = k
                stops = true
            case .ignore: key = nil
            }
            guard let key, var state = states[key] else {
                if i == events.count { result = ([], key) }
                continue
            }
            let actions = try manager.handle(envelope, state: state)
            manager.apply(envelope, to: &state)
            states[key] = stops ? nil : state
            if i == events.count { result = (actions, key) }
        }
        return ProcessOutcome(
            given: events.map { String(reflecting: $0) }, event: String(reflecting: event), actions: result.actions,
            key: result.key, states: states)
    }

    private func envelope(_ value: Manager.Family, position: Int64) throws -> Envelope<Manager.Family> {
        let codec = try EventCodec<Manager.Family>.shared()
        let data = try codec.encode(value, metadata: EventMetadata(correlationID: UUID()))
        let recorded = RecordedEvent(
            position: position, stream: "scenario-1", streamVersion: position, id: data.id, type: data.type,
            schemaVersion: data.schemaVersion, data: data.data, metadata: data.metadata, recordedAt: recordedAt)
        return try codec.envelope(recorded)
    }
}

/// What a process manager asked for when the scenario's event arrived. Its `then` methods check
/// it and can be chained.
public struct ProcessOutcome<Manager: ProcessManager>: Sendable {
    let given: [String]
    let event: String
    /// Everything the process manager asked for, in order.
    public let actions: [ProcessAction]
    /// The instance the event was routed to (nil when ignored).
    public let key: String?
    let states: [String: Manager.State]

    /// The state of instance `key` after the event (nil when it does not run).
    public func state(_ key: String) -> Manager.State? { states[key] }

    /// Checks every action, in order (pass `[]` for none).
    @discardableResult
    public func then(_ expected: [ProcessAction]) throws(ScenarioFailure) -> Self {
        try compare(expected.map(render), actions.map(render), what: "actions")
    }

    /// Checks the commands dispatched at once, in order.
    @discardableResult
    public func thenDispatched(_ expected: [any Command & Encodable]) throws(ScenarioFailure) -> Self {
        try compare(
            expected.map { render(.dispatch($0)) },
            actions.filter { if case .dispatch = $0 { true } else { false } }.map(render), what: "dispatched commands")
    }

    /// Checks the commands scheduled for later, in order: each with its delay after the event and its key.
    @discardableResult
    public func thenScheduled(_ expected: [(any Command & Encodable, after: Duration, key: String?)])
        throws(ScenarioFailure) -> Self
    {
        try compare(
            expected.map { render(.schedule($0.0, after: $0.after, key: $0.key)) },
            actions.filter { if case .schedule = $0 { true } else { false } }.map(render), what: "scheduled commands")
    }

    /// Checks the cancelled keys, in order.
    @discardableResult
    public func thenCancelled(_ keys: [String]) throws(ScenarioFailure) -> Self {
        try compare(
            keys.map { render(.cancel(key: $0)) },
            actions.filter { if case .cancel = $0 { true } else { false } }.map(render), what: "cancellations")
    }

    /// Checks that the instance `key` no longer runs (it stopped, or never started).
    @discardableResult
    public func thenStopped(_ key: String) throws(ScenarioFailure) -> Self {
        guard let state = states[key] else { return self }
        throw failure("expected instance '\(key)' to be stopped, but it runs with state \(String(reflecting: state))")
    }

    /// Runs `check` on the state of instance `key` after the event.
    /// - Throws: ``ScenarioFailure`` when the instance does not run; what `check` throws.
    @discardableResult
    public func thenState(_ key: String, _ check: (Manager.State) throws -> Void) throws -> Self {
        guard let state = states[key] else { throw failure("expected instance '\(key)' to run, but it does not") }
        try check(state)
        return self
    }

    private func compare(_ expected: [String], _ actual: [String], what: String) throws(ScenarioFailure) -> Self {
        guard
            let i = (0..<max(expected.count, actual.count)).first(where: {
                $0 >= expected.count || $0 >= actual.count || expected[$0] != actual[$0]
            })
        else { return self }
        throw failure(
            "the \(what) differ from item \(i + 1) on",
            sections: [("expected", list(expected, mark: i)), ("actual", list(actual, mark: i))])
    }

    private func failure(_ summary: String, sections: [(String, String)] = []) -> ScenarioFailure {
        var lines = ["Process scenario failed: \(summary)."]
        lines.append("given \(given.count) event\(given.count == 1 ? "" : "s"):")
        lines.append(list(given))
        lines.append("when \(event)  (routed to \(key.map { "instance '\($0)'" } ?? "no instance"))")
        for (title, body) in sections {
            lines.append("\(title):")
            lines.append(body)
        }
        return ScenarioFailure(message: lines.joined(separator: "\n"))
    }

    private func list(_ items: [String], mark: Int? = nil) -> String {
        if items.isEmpty && mark == nil { return "    (none)" }
        var lines = items.enumerated().map { i, item in "  \(i == mark ? ">" : " ") \(i + 1). \(item)" }
        if let mark, mark >= items.count { lines.append("  > \(mark + 1). (none)") }
        return lines.joined(separator: "\n")
    }

    private func render(_ action: ProcessAction) -> String {
        func command(_ c: any Command & Encodable) -> String {
            let json = (try? encodeCommand(c)).map { String(decoding: $0, as: UTF8.self) } ?? "(does not encode)"
            return "\(type(of: c).commandName) \(json)"
        }
        switch action {
        case .dispatch(let c): return "dispatch \(command(c))"
        case .schedule(let c, let at, let key):
            let when: String
            switch at {
            case .afterEvent(let d): when = "\(d) after the event"
            case .date(let date): when = "at \(date)"
            }
            return "schedule \(command(c)) \(when)\(key.map { " key '\($0)'" } ?? "")"
        case .cancel(let key): return "cancel key '\(key)'"
        }
    }
}
