import Backstage
import BackstageTesting
import Testing

// A turnstile: a coin unlocks it, passing locks it again.

struct CoinInserted: Event {
    static let typeName = "CoinInserted"
    var cents: Int
}

struct VisitorPassed: Event {
    static let typeName = "VisitorPassed"
    var visitor: String
}

/// An event type that is not a member of the family: it cannot be stored.
struct TurnstileJammed: Event {
    static let typeName = "TurnstileJammed"
}

enum TurnstileEvent: EventFamily {
    case coin(CoinInserted)
    case passed(VisitorPassed)
    case jammed(TurnstileJammed)

    // Each member names its case once; the event type is the case's payload.
    static let members: [EventMember<TurnstileEvent>] = [.init(coin), .init(passed)]
}

enum TurnstileError: Error, Equatable {
    case locked
    case alreadyUnlocked(credit: Int)
}

struct Turnstile: Aggregate, Equatable {
    typealias Event = TurnstileEvent
    typealias Rejection = TurnstileError
    static let category = "turnstile"
    var credit = 0
    var visitors: [String] = []

    mutating func apply(_ event: TurnstileEvent) {
        switch event {
        case .coin(let e): credit += e.cents
        case .passed(let e):
            credit = 0
            visitors.append(e.visitor)
        case .jammed: break
        }
    }
}

struct InsertCoin: Command {
    typealias Target = Turnstile
    var id = "t1"
    var cents: Int
}

struct PassTurnstile: Command {
    typealias Target = Turnstile
    var id = "t1"
    var visitor: String
}

struct KickTurnstile: Command {
    typealias Target = Turnstile
    var id = "t1"
}

struct BreakTurnstile: Command {
    typealias Target = Turnstile
    var id = "t1"
}

/// Names its turnstile and decides itself: routed with no closure.
struct PayAndPass: DecidingCommand {
    typealias Target = Turnstile
    var gate = "t1"
    var visitor: String
    var aggregateID: String { gate }

    func decide(_ turnstile: Turnstile) throws(TurnstileError) -> [TurnstileEvent] {
        guard turnstile.credit >= 100 else { throw .locked }
        return [.passed(VisitorPassed(visitor: visitor))]
    }
}

struct UnroutedTurnstileCommand: Command {
    typealias Target = Turnstile
}

func turnstileRouter() throws -> Router {
    var router = try Router(PayAndPass.self)
    try router.route(InsertCoin.self, id: \.id) { turnstile, command throws(TurnstileError) in
        if turnstile.credit >= 100 { throw .alreadyUnlocked(credit: turnstile.credit) }
        return [.coin(CoinInserted(cents: command.cents))]
    }
    try router.route(PassTurnstile.self, id: \.id) { turnstile, command throws(TurnstileError) in
        guard turnstile.credit >= 100 else { throw .locked }
        return [.passed(VisitorPassed(visitor: command.visitor))]
    }
    try router.route(KickTurnstile.self, id: \.id) { _, _ in [.jammed(TurnstileJammed())] }
    try router.route(BreakTurnstile.self, id: \.id) { _, _ in throw CancellationError() }
    return router
}

@Suite("Scenarios")
struct ScenarioTests {
    let scenario: Scenario

    init() throws {
        scenario = Scenario(router: try turnstileRouter())
    }

    @Test func expectedEventsPass() throws {
        let outcome = try scenario.given(Turnstile.self, [.coin(CoinInserted(cents: 100))])
            .when(PassTurnstile(visitor: "ada"))
            .then([.passed(VisitorPassed(visitor: "ada"))])
            .thenState(equals: Turnstile(credit: 0, visitors: ["ada"]))
            .thenState { turnstile in #expect(turnstile.visitors == ["ada"]) }
        #expect(outcome.stream == "turnstile-t1")
        #expect(outcome.events.count == 1)
        #expect(outcome.rejection == nil)
    }

    @Test func whenWithoutGivenStartsFromANewAggregate() throws {
        try scenario.when(InsertCoin(cents: 50)).then([.coin(CoinInserted(cents: 50))])
        try scenario.given(Turnstile.self, []).when(PassTurnstile(visitor: "bob")).thenRejected(.locked)
    }

    @Test func givenStateIsTheFoldOfTheEvents() {
        let given = scenario.given(
            Turnstile.self, [.coin(CoinInserted(cents: 30)), .coin(CoinInserted(cents: 40))])
        #expect(given.state.credit == 70)
    }

    @Test func differentEventsThrowAReadableFailure() throws {
        let error = #expect(throws: ScenarioFailure.self) {
            try scenario.given(Turnstile.self, [.coin(CoinInserted(cents: 100))])
                .when(PassTurnstile(visitor: "ada"))
                .then([.passed(VisitorPassed(visitor: "bob"))])
        }
        let message = try #require(error).message
        #expect(message.contains("the events differ from event 1 on"))
        #expect(message.contains("given 1 event:\n    1. TurnstileEvent.coin(CoinInserted(cents: 100))"))
        #expect(message.contains("when PassTurnstile(id: \"t1\", visitor: \"ada\")  (stream turnstile-t1)"))
        #expect(message.contains("expected 1 event:\n  > 1. TurnstileEvent.passed(VisitorPassed(visitor: \"bob\"))"))
        #expect(message.contains("actual 1 event:\n  > 1. TurnstileEvent.passed(VisitorPassed(visitor: \"ada\"))"))
        #expect(!message.contains("BackstageTests."), "module prefixes are dropped: \(message)")
    }

    @Test func missingAndExtraEventsAreMarked() throws {
        let missing = #expect(throws: ScenarioFailure.self) {
            try scenario.when(InsertCoin(cents: 10))
                .then([.coin(CoinInserted(cents: 10)), .passed(VisitorPassed(visitor: "x"))])
        }
        let text = try #require(missing).message
        #expect(text.contains("the events differ from event 2 on"))
        #expect(text.contains("    1. TurnstileEvent.coin(CoinInserted(cents: 10))\n  > 2. TurnstileEvent.passed"))
        #expect(text.contains("actual 1 event:\n    1. TurnstileEvent.coin(CoinInserted(cents: 10))\n  > 2. (none)"))

        let extra = #expect(throws: ScenarioFailure.self) {
            try scenario.when(InsertCoin(cents: 10)).then([])
        }
        #expect(try #require(extra).message.contains("expected 0 events:\n  > 1. (none)"))
    }

    @Test func expectingEventsFromARejectedCommandFails() throws {
        let error = #expect(throws: ScenarioFailure.self) {
            try scenario.when(PassTurnstile(visitor: "ada")).then([.passed(VisitorPassed(visitor: "ada"))])
        }
        #expect(
            try #require(error).message.contains(
                "expected 1 event, but the command was rejected: TurnstileError.locked"))
    }

    @Test func rejections() throws {
        let given = scenario.given(Turnstile.self, [.coin(CoinInserted(cents: 120))])
        let outcome = try given.when(InsertCoin(cents: 5))
            .thenRejected(.alreadyUnlocked(credit: 120))
            .thenRejected { if case .alreadyUnlocked = $0 { true } else { false } }
            .thenState(equals: Turnstile(credit: 120))
        #expect(outcome.rejection == .alreadyUnlocked(credit: 120))
        #expect(outcome.events.isEmpty)

        let wrong = #expect(throws: ScenarioFailure.self) {
            try given.when(InsertCoin(cents: 5)).thenRejected(.locked)
        }
        let wrongText = try #require(wrong).message
        #expect(wrongText.contains("expected rejection TurnstileError.locked, but it was rejected with "))
        #expect(wrongText.contains("rejected with TurnstileError.alreadyUnlocked(credit: 120)."))

        let succeeded = #expect(throws: ScenarioFailure.self) {
            try scenario.when(InsertCoin(cents: 5)).thenRejected(.locked)
        }
        let text = try #require(succeeded).message
        #expect(text.contains("expected rejection TurnstileError.locked, but the command succeeded with 1 event"))
        #expect(text.contains("    1. TurnstileEvent.coin(CoinInserted(cents: 5))"))

        #expect(throws: ScenarioFailure.self) {
            try given.when(InsertCoin(cents: 5)).thenRejected { $0 == .locked }
        }
    }

    @Test func differentStateThrowsBothStates() throws {
        let error = #expect(throws: ScenarioFailure.self) {
            try scenario.when(InsertCoin(cents: 10)).thenState(equals: Turnstile(credit: 11))
        }
        let text = try #require(error).message
        #expect(text.contains("the state differs from the expected state"))
        #expect(text.contains("expected state:\n    ▿ Turnstile\n      - credit: 11"))
        #expect(text.contains("actual state:\n    ▿ Turnstile\n      - credit: 10"))
    }

    @Test func errorsOfStateChecksPropagate() {
        struct Wrong: Error {}
        #expect(throws: Wrong.self) {
            try scenario.when(InsertCoin(cents: 10)).thenState { _ in throw Wrong() }
        }
    }

    @Test func eventsThatCannotBeStoredFail() throws {
        let error = #expect(throws: ScenarioFailure.self) {
            try scenario.when(KickTurnstile()).then([.jammed(TurnstileJammed())])
        }
        let text = try #require(error).message
        #expect(text.contains("the produced event TurnstileEvent.jammed(TurnstileJammed()) does not survive storage"))
        #expect(text.contains("TurnstileJammed"))
    }

    @Test func errorsThatAreNotRejectionsPropagate() {
        #expect(throws: CancellationError.self) {
            try scenario.when(BreakTurnstile())
        }
    }

    @Test func decidingCommandsRouteThemselvesWithTypedRejections() throws {
        let outcome = scenario.given(Turnstile.self, [.coin(CoinInserted(cents: 100))])
        try outcome.when(PayAndPass(gate: "t1", visitor: "ada"))
            .then([.passed(VisitorPassed(visitor: "ada"))])
        let rejected = try scenario.when(PayAndPass(gate: "t9", visitor: "bob")).thenRejected(.locked)
        #expect(rejected.stream == "turnstile-t9")
        let rejection: TurnstileError? = rejected.rejection
        #expect(rejection == .locked)
    }

    @Test func unroutedCommandsThrowTheRoutingError() {
        #expect(throws: RoutingError.noRoute(command: "UnroutedTurnstileCommand")) {
            try scenario.when(UnroutedTurnstileCommand())
        }
    }
}
