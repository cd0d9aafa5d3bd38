import Backstage
import Foundation
import Synchronization

// The benchmark domain: bank accounts. Every event carries a JSON payload of about 200 bytes,
// the row shape the ceilings use too.

/// Money paid into an account.
struct Deposited: Event {
    static let typeName = "Deposited"
    var account: String
    var amount: Int
    var reference: String
    var memo: String
}

/// Money taken out of an account.
struct Withdrawn: Event {
    static let typeName = "Withdrawn"
    var account: String
    var amount: Int
    var reference: String
    var memo: String
}

enum AccountEvent: EventFamily {
    case deposited(Deposited)
    case withdrawn(Withdrawn)

    static let members: [EventMember<AccountEvent>] = [
        .init(Deposited.self, AccountEvent.deposited),
        .init(Withdrawn.self, AccountEvent.withdrawn),
    ]

    var event: any Event {
        switch self {
        case .deposited(let e): e
        case .withdrawn(let e): e
        }
    }
}

/// The aggregate: a balance that may not go negative.
struct Account: Aggregate, Codable {
    typealias Rejection = InsufficientFunds
    static let category = "account"
    var balance = 0
    var movements = 0

    mutating func apply(_ event: AccountEvent) {
        switch event {
        case .deposited(let e): balance += e.amount
        case .withdrawn(let e): balance -= e.amount
        }
        movements += 1
    }
}

struct InsufficientFunds: Error {}

/// Pays `amount` into account `account`.
struct Deposit: Command {
    typealias Target = Account
    var account: String
    var amount: Int
}

/// Takes `amount` out of account `account`.
struct Withdraw: Command {
    typealias Target = Account
    var account: String
    var amount: Int
}

/// A memo long enough to make every event's JSON about 200 bytes.
let memo = String(repeating: "benchmark payload ", count: 6)

func accountRouter() throws -> Router {
    var router = Router()
    try router.route(Deposit.self, id: \.account) { (_: Account, c: Deposit) throws(InsufficientFunds) in
        [.deposited(Deposited(account: c.account, amount: c.amount, reference: referenceID(), memo: memo))]
    }
    try router.route(Withdraw.self, id: \.account) { (account: Account, c: Withdraw) throws(InsufficientFunds) in
        guard account.balance >= c.amount else { throw InsufficientFunds() }
        return [.withdrawn(Withdrawn(account: c.account, amount: c.amount, reference: referenceID(), memo: memo))]
    }
    return router
}

/// A 36-character reference, different for every event (so payloads differ), made cheaply so
/// the figures measure the framework, not the domain code.
func referenceID() -> String {
    let n = referenceCounter.add(1, ordering: .relaxed).oldValue
    return "ref-" + String(n + 10_000_000_000_000_000, radix: 10) + "-benchmark-xx"
}

private let referenceCounter = Atomic<Int>(0)

/// The JSON of one `Deposited` event, as the codec writes it; used for raw rows and batch appends.
func samplePayload(account: String) -> Data {
    let e = Deposited(account: account, amount: 100, reference: referenceID(), memo: memo)
    return (try? JSONEncoder().encode(e)) ?? Data()
}

/// The type name of W3's batch events (a third type for the catch-up's count per type).
let batchEventType = "ItemRecorded"
