import Backstage
import Foundation
import Synchronization

// A small bank-account domain and a counter, used by the runtime tests.

struct AccountOpened: Event, Equatable {
    static let typeName = "AccountOpened"
    var owner: String
}

/// Version 2 added `note`; version 1 stored the amount as `cents`.
struct MoneyDeposited: Event, Equatable {
    static let typeName = "MoneyDeposited"
    static let schemaVersion = 2
    var amount: Int
    var note: String
}

struct MoneyDepositedV1: Decodable, Sendable {
    var cents: Int
}

struct MoneyWithdrawn: Event, Equatable {
    static let typeName = "MoneyWithdrawn"
    var amount: Int
}

enum AccountEvent: EventFamily, Equatable {
    case opened(AccountOpened)
    case deposited(MoneyDeposited)
    case withdrawn(MoneyWithdrawn)

    static let members: [EventMember<AccountEvent>] = [
        .init(AccountOpened.self, AccountEvent.opened),
        .init(MoneyDeposited.self, AccountEvent.deposited),
        .init(MoneyWithdrawn.self, AccountEvent.withdrawn),
    ]

    static let upcasters: [Upcaster<AccountEvent>] = [
        Upcaster(from: "MoneyDeposited", version: 1, as: MoneyDepositedV1.self) { old in
            .deposited(MoneyDeposited(amount: old.cents, note: "upcast from v1"))
        }
    ]
}

struct Account: Aggregate, Codable, Equatable {
    typealias Event = AccountEvent

    enum Rejection: Error, Equatable {
        case alreadyOpen
        case notOpen
        case insufficientFunds(balance: Int, requested: Int)
    }

    static let category = "account"

    var owner: String?
    var balance = 0
    var eventCount = 0

    init() {}

    mutating func apply(_ event: AccountEvent) {
        eventCount += 1
        switch event {
        case .opened(let e): owner = e.owner
        case .deposited(let e): balance += e.amount
        case .withdrawn(let e): balance -= e.amount
        }
    }

    func open(_ c: OpenAccount) throws(Rejection) -> [AccountEvent] {
        guard owner == nil else { throw .alreadyOpen }
        return [.opened(AccountOpened(owner: c.owner))]
    }

    func deposit(_ c: Deposit) throws(Rejection) -> [AccountEvent] {
        guard owner != nil else { throw .notOpen }
        return Array(repeating: .deposited(MoneyDeposited(amount: c.amount, note: c.note)), count: c.times)
    }

    func withdraw(_ c: Withdraw) throws(Rejection) -> [AccountEvent] {
        guard owner != nil else { throw .notOpen }
        guard c.amount <= balance else { throw .insufficientFunds(balance: balance, requested: c.amount) }
        return [.withdrawn(MoneyWithdrawn(amount: c.amount))]
    }
}

struct InvalidCommand: Error, Equatable {
    var reason: String
}

struct OpenAccount: ValidatableCommand {
    typealias Target = Account
    var id: String
    var owner: String
    func validate() throws {
        if owner.isEmpty { throw InvalidCommand(reason: "owner is empty") }
    }
}

struct Deposit: ValidatableCommand {
    typealias Target = Account
    var id: String
    var amount: Int
    var note = ""
    var times = 1
    func validate() throws {
        if amount <= 0 { throw InvalidCommand(reason: "amount must be positive") }
    }
}

struct Withdraw: Command {
    typealias Target = Account
    var id: String
    var amount: Int
}

/// Decides nothing.
struct Touch: Command {
    typealias Target = Account
    var id: String
}

// MARK: Counter

struct CounterIncremented: Event, Equatable {
    static let typeName = "CounterIncremented"
    var by: Int
}

enum CounterEvent: EventFamily, Equatable {
    case incremented(CounterIncremented)

    static let members: [EventMember<CounterEvent>] = [.init(CounterIncremented.self, CounterEvent.incremented)]

    var event: any Event {
        switch self {
        case .incremented(let e): e
        }
    }
}

struct Counter: Aggregate, Codable, Equatable {
    typealias Event = CounterEvent
    static let category = "counter"
    var count = 0
    var applied = 0
    init() {}
    mutating func apply(_ event: CounterEvent) {
        applied += 1
        switch event {
        case .incremented(let e): count += e.by
        }
    }
}

/// The same counter with a new snapshot shape version.
struct CounterV2: Aggregate, Codable, Equatable {
    typealias Event = CounterEvent
    static let category = "counter"
    static let snapshotSchemaVersion = 2
    var count = 0
    var applied = 0
    init() {}
    mutating func apply(_ event: CounterEvent) {
        applied += 1
        switch event {
        case .incremented(let e): count += e.by
        }
    }
}

struct Increment: Command {
    typealias Target = Counter
    var id: String
    var events = 1
    var probe: DecideProbe? = nil
}

struct IncrementV2: Command {
    typealias Target = CounterV2
    var id: String
}

/// Records how many decisions for one stream are in flight at once (from `decide` until the
/// store's append returned).
final class DecideProbe: Sendable {
    private struct State {
        var active: [String: Int] = [:]
        var maxActive = 0
        var decisions = 0
    }
    private let state = Mutex(State())

    func enter(_ stream: String) {
        state.withLock { s in
            s.active[stream, default: 0] += 1
            s.maxActive = max(s.maxActive, s.active[stream]!)
            s.decisions += 1
        }
    }

    func exit(_ stream: String) {
        state.withLock { s in s.active[stream, default: 0] -= 1 }
    }

    var maxActive: Int { state.withLock { $0.maxActive } }
    var decisions: Int { state.withLock { $0.decisions } }
}

func makeRouter() throws -> Router {
    var router = Router()
    try router.route(OpenAccount.self, id: \.id) { account, c throws(Account.Rejection) in try account.open(c) }
    try router.route(Deposit.self, id: \.id) { account, c throws(Account.Rejection) in try account.deposit(c) }
    try router.route(Withdraw.self, id: \.id) { account, c throws(Account.Rejection) in try account.withdraw(c) }
    try router.route(Touch.self, id: \.id) { _, _ throws(Account.Rejection) in [] }
    try router.route(Increment.self, id: \.id) { _, c in
        c.probe?.enter(Counter.streamID(c.id))
        return Array(repeating: .incremented(CounterIncremented(by: 1)), count: c.events)
    }
    return router
}

func makeApp(
    _ store: any EventStore, middleware: [any Middleware] = [ValidationMiddleware()],
    _ configure: (inout BackstageApp.Configuration) -> Void = { _ in }
) throws -> BackstageApp {
    var configuration = BackstageApp.Configuration()
    configure(&configuration)
    return BackstageApp(store: store, router: try makeRouter(), middleware: middleware, configuration: configuration)
}

// MARK: Store decorator

/// Lets `parties` tasks through together; `open(false)` releases everyone (used as a timeout).
final class Rendezvous: Sendable {
    private struct State {
        var arrived = 0
        var outcome: Bool?
        var waiters: [CheckedContinuation<Bool, Never>] = []
    }
    private let parties: Int
    private let state = Mutex(State())

    init(parties: Int) { self.parties = parties }

    /// Waits until `parties` tasks arrived (true) or the rendezvous was given up (false).
    func arrive() async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let release = state.withLock { s -> (Bool, [CheckedContinuation<Bool, Never>])? in
                if let outcome = s.outcome { return (outcome, [c]) }
                s.arrived += 1
                s.waiters.append(c)
                guard s.arrived >= parties else { return nil }
                s.outcome = true
                defer { s.waiters = [] }
                return (true, s.waiters)
            }
            if let (outcome, waiters) = release { for w in waiters { w.resume(returning: outcome) } }
        }
    }

    /// Gives up: every waiter (and every later arrival) gets `false`.
    func giveUp() {
        let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            guard s.outcome == nil else { return [] }
            s.outcome = false
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume(returning: false) }
    }
}

/// Collects strings from concurrent code, in order.
final class Journal: Sendable {
    private let entries = Mutex<[String]>([])
    func record(_ s: String) { entries.withLock { $0.append(s) } }
    var all: [String] { entries.withLock { $0 } }
}

/// Stores positions with gaps (every position doubled), as PostgreSQL does when concurrent
/// transactions share its sequence: the positions of one append are not contiguous.
final class SpacedStore: EventStore {
    let inner = InMemoryEventStore()
    var limits: StoreLimits { inner.limits }

    private func spaced(_ e: RecordedEvent) -> RecordedEvent {
        var e = e
        e.position *= 2
        return e
    }
    private func spaced(_ r: AppendResult) -> AppendResult {
        var r = r
        r.firstPosition *= 2
        r.lastPosition *= 2
        return r
    }

    func append(_ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?) async throws
        -> AppendResult
    {
        spaced(try await inner.append(events, to: stream, expected: expected, commandID: commandID))
    }
    func readStream(_ stream: String, from version: Int64, direction: ReadDirection, limit: Int) async throws
        -> [RecordedEvent]
    {
        try await inner.readStream(stream, from: version, direction: direction, limit: limit).map(spaced)
    }
    func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws -> [RecordedEvent] {
        try await inner.readAll(after: LogPosition(position: position.position / 2), limit: limit, filter: filter)
            .map(spaced)
    }
    func streamVersion(_ stream: String) async throws -> Int64 { try await inner.streamVersion(stream) }
    func headPosition() async throws -> LogPosition {
        LogPosition(position: try await inner.headPosition().position * 2)
    }
    func appendResult(forCommand commandID: UUID) async throws -> AppendResult? {
        try await inner.appendResult(forCommand: commandID).map(spaced)
    }
    func saveSnapshot(_ snapshot: Snapshot) async throws { try await inner.saveSnapshot(snapshot) }
    func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        try await inner.loadSnapshot(stream, schemaVersion: schemaVersion)
    }
    func appendNotifications() -> AsyncStream<Void> { inner.appendNotifications() }
}
