import Backstage
import Foundation

/// Given/when/then tests of an aggregate's decisions, with no store involved.
///
/// A scenario applies the *given* events to a fresh aggregate, decides the *when* command with
/// the decision function registered in the `Router`, and checks the outcome: the events, the
/// rejection, or the state. Each check throws a ``ScenarioFailure`` with a readable message, so
/// scenarios work with any test framework (Swift Testing, XCTest):
///
/// ```swift
/// @Test func sellingTheLastTicketSellsOut() throws {
///     try Scenario(router: .boxOffice())
///         .given(Show.self, [.scheduled(ShowScheduled(showID: "s1", title: "Hamlet", capacity: 1)),
///                            .ticketAdded(TicketAdded(showID: "s1", ticketID: "t1"))])
///         .when(SellTicket(showID: "s1", buyer: "ada"))
///         .then([.ticketSold(TicketSold(showID: "s1", ticketID: "t1", buyer: "ada"))])
///         .thenState { show in #expect(show.onSale.isEmpty) }
/// }
/// ```
///
/// Events are compared in their stored form (type name, schema version and JSON), so event types
/// need not be `Equatable`; a produced event that would not survive storage (it does not encode,
/// or does not decode back into the family) fails the scenario too.
public struct Scenario: Sendable {
    /// The router whose decision functions the scenario runs.
    public let router: Router

    /// Creates a scenario that decides commands with the routes of `router`.
    public init(router: Router) {
        self.router = router
    }

    /// Starts from an instance of `aggregate` that has seen `events`, in order.
    public func given<A: Aggregate>(_ aggregate: A.Type, _ events: [A.Event]) -> Given<A> {
        Given(router: router, events: events)
    }

    /// Starts from a new instance of the command's aggregate (no events) and decides `command`.
    ///
    /// - Throws: `RoutingError/noRoute(command:)` when the router has no route for the command.
    public func when<C: Command>(_ command: C) throws -> Outcome<C.Target> {
        try Given<C.Target>(router: router, events: []).when(command)
    }

    /// An aggregate instance built from past events, ready to decide a command.
    public struct Given<A: Aggregate>: Sendable {
        let router: Router
        /// The events applied, in order.
        public let events: [A.Event]

        /// The state after the given events.
        public var state: A {
            var state = A()
            for event in events { state.apply(event) }
            return state
        }

        /// Decides `command` on the state built from the given events.
        ///
        /// - Throws: `RoutingError/noRoute(command:)` when the router has no route for the command,
        ///   or the error `decide` threw when it is not the aggregate's `Rejection`.
        public func when<C: Command>(_ command: C) throws -> Outcome<A> where C.Target == A {
            let route = try router.route(for: C.self)
            let before = state
            let result: Result<[A.Event], A.Rejection>
            do {
                result = .success(try route.decide(before, command))
            } catch let rejection as A.Rejection {
                result = .failure(rejection)
            }
            return Outcome(
                given: events, command: String(reflecting: command), commandName: C.commandName,
                stream: A.streamID(route.id(command)), before: before, result: result,
                codec: route.aggregate.codec)
        }
    }

    /// What the command decided: events or a rejection. Its `then` methods check it and can be chained.
    public struct Outcome<A: Aggregate>: Sendable {
        let given: [A.Event]
        let command: String
        let commandName: String
        /// The stream of the aggregate instance the command was routed to.
        public let stream: String
        let before: A
        let result: Result<[A.Event], A.Rejection>
        let codec: EventCodec<A.Event>

        /// The events the command produced (none when it was rejected).
        public var events: [A.Event] { (try? result.get()) ?? [] }

        /// The rejection, when the command was rejected.
        public var rejection: A.Rejection? {
            if case .failure(let error) = result { return error }
            return nil
        }

        /// The state after the produced events (the given state when the command was rejected).
        public var state: A {
            var state = before
            for event in events { state.apply(event) }
            return state
        }

        /// Checks that the command produced exactly `expected`, in order (pass `[]` for no events).
        ///
        /// - Throws: ``ScenarioFailure`` when the command was rejected, produced other events, or
        ///   produced an event that does not survive storage.
        @discardableResult
        public func then(_ expected: [A.Event]) throws(ScenarioFailure) -> Self {
            let actual: [A.Event]
            switch result {
            case .failure(let error):
                throw failure(
                    "expected \(count(expected.count)), but the command was rejected: \(describe(error))",
                    sections: [("expected", list(expected.map(render)))])
            case .success(let events):
                actual = events
            }
            let actualForms = try actual.map { event throws(ScenarioFailure) in
                try storedForm(event, role: "produced")
            }
            let expectedForms = try expected.map { event throws(ScenarioFailure) in
                try storedForm(event, role: "expected")
            }
            guard let difference = firstDifference(expectedForms, actualForms) else { return self }
            throw failure(
                "the events differ from event \(difference + 1) on",
                sections: [
                    ("expected \(count(expected.count))", list(expected.map(render), mark: difference)),
                    ("actual \(count(actual.count))", list(actual.map(render), mark: difference)),
                ])
        }

        /// Checks that the command was rejected with `expected`.
        ///
        /// - Throws: ``ScenarioFailure`` when the command succeeded or was rejected with another error.
        @discardableResult
        public func thenRejected(_ expected: A.Rejection) throws(ScenarioFailure) -> Self
        where A.Rejection: Equatable {
            try thenRejected(describing: describe(expected)) { $0 == expected }
        }

        /// Checks that the command was rejected with an error that satisfies `matches`.
        ///
        /// - Throws: ``ScenarioFailure`` when the command succeeded or `matches` returned false.
        @discardableResult
        public func thenRejected(where matches: (A.Rejection) -> Bool) throws(ScenarioFailure) -> Self {
            try thenRejected(describing: "a rejection that matches the condition", matches)
        }

        private func thenRejected(describing expected: String, _ matches: (A.Rejection) -> Bool)
            throws(ScenarioFailure) -> Self
        {
            switch result {
            case .success(let events):
                throw failure(
                    "expected rejection \(expected), but the command succeeded with \(count(events.count))",
                    sections: [("actual \(count(events.count))", list(events.map(render)))])
            case .failure(let error):
                if matches(error) { return self }
                throw failure("expected rejection \(expected), but it was rejected with \(describe(error))")
            }
        }

        /// Runs `check` on the state after the produced events; errors it throws (and issues it
        /// records, such as `#expect` failures) fail the test.
        @discardableResult
        public func thenState(_ check: (A) throws -> Void) rethrows -> Self {
            try check(state)
            return self
        }

        /// Checks that the state after the produced events equals `expected`.
        ///
        /// - Throws: ``ScenarioFailure`` showing both states when they differ.
        @discardableResult
        public func thenState(equals expected: A) throws(ScenarioFailure) -> Self where A: Equatable {
            let actual = state
            if actual == expected { return self }
            throw failure(
                "the state differs from the expected state",
                sections: [("expected state", indent(dumped(expected))), ("actual state", indent(dumped(actual)))])
        }

        // MARK: Rendering

        private struct StoredForm: Equatable {
            var type: String
            var schemaVersion: Int
            var json: Data
        }

        private func storedForm(_ value: A.Event, role: String) throws(ScenarioFailure) -> StoredForm {
            let event = value.event
            let type = Swift.type(of: event)
            let json: Data
            do {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                json = try encoder.encode(event)
                let stored = try codec.encode(value, metadata: EventMetadata())
                _ = try codec.decode(
                    RecordedEvent(
                        position: 1, transaction: 0, stream: stream, streamVersion: 1, id: stored.id,
                        type: stored.type, schemaVersion: stored.schemaVersion, data: stored.data,
                        metadata: stored.metadata, recordedAt: Date()))
            } catch {
                throw failure("the \(role) event \(render(value)) does not survive storage: \(error)")
            }
            return StoredForm(type: type.typeName, schemaVersion: type.schemaVersion, json: json)
        }

        private func failure(_ summary: String, sections: [(String, String)] = []) -> ScenarioFailure {
            var lines = ["Scenario failed: \(summary)."]
            lines.append("given \(count(given.count)):")
            lines.append(list(given.map(render)))
            lines.append("when \(readable(command))  (stream \(stream))")
            for (title, body) in sections {
                lines.append("\(title):")
                lines.append(body)
            }
            return ScenarioFailure(message: lines.joined(separator: "\n"))
        }

        private var modules: [String] { moduleNames(of: [A.self, A.Event.self, A.Rejection.self]) }
        private func readable(_ text: String) -> String { BackstageTesting.readable(text, modules: modules) }
        private func render(_ value: A.Event) -> String { readable(String(reflecting: value)) }
        private func describe(_ error: A.Rejection) -> String {
            let typeName = String(reflecting: Swift.type(of: error))
            let reflected = String(reflecting: error)
            // A custom description does not name the type: name it.
            return reflected.hasPrefix(typeName) ? readable(reflected) : "\(readable(typeName)): \(reflected)"
        }
        private func dumped(_ value: A) -> String {
            var text = ""
            dump(value, to: &text)
            return readable(text)
        }
    }
}

/// A scenario whose outcome was not the expected one. Its message shows the given events, the
/// command, and the expected and actual outcome, one event per line, with the first difference
/// marked by `>`.
public struct ScenarioFailure: Error, Sendable, CustomStringConvertible, LocalizedError {
    /// The readable explanation.
    public let message: String

    /// Creates a failure with `message`.
    package init(message: String) {
        self.message = message
    }

    public var description: String { message }
    public var errorDescription: String? { message }
}

// MARK: Helpers

private func count(_ n: Int) -> String { n == 1 ? "1 event" : "\(n) events" }

/// One line per item, numbered, indented; the item at `mark` (or the missing one) gets a `>`.
private func list(_ items: [String], mark: Int? = nil) -> String {
    if items.isEmpty && mark == nil { return "    (none)" }
    var lines = items.enumerated().map { i, item in "  \(i == mark ? ">" : " ") \(i + 1). \(item)" }
    if let mark, mark >= items.count { lines.append("  > \(mark + 1). (none)") }
    return lines.joined(separator: "\n")
}

private func indent(_ text: String) -> String {
    text.split(separator: "\n", omittingEmptySubsequences: false)
        .filter { !$0.isEmpty }
        .map { "    \($0)" }
        .joined(separator: "\n")
}

private func firstDifference<T: Equatable>(_ a: [T], _ b: [T]) -> Int? {
    for i in 0..<max(a.count, b.count) where i >= a.count || i >= b.count || a[i] != b[i] {
        return i
    }
    return nil
}

/// The module names of `types`, whose prefixes are dropped from rendered values:
/// `BoxOffice.ShowEvent.sold(BoxOffice.TicketSold(...))` reads as `ShowEvent.sold(TicketSold(...))`.
private func moduleNames(of types: [Any.Type]) -> [String] {
    let names = types.compactMap { type in
        String(reflecting: type).split(separator: ".", maxSplits: 1).first.map(String.init)
    }
    return Array(Set(names))
}

private func readable(_ text: String, modules: [String]) -> String {
    modules.reduce(text) { text, module in text.replacingOccurrences(of: module + ".", with: "") }
}
