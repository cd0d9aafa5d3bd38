import Backstage
import Foundation

// A wallet whose events carry several fields (so JSON key order matters): the runtime's
// multi-process tests on SQLite and PostgreSQL, where a worker process appends to it.

package struct Credited: Event, Equatable {
    package static let typeName = "Credited"
    package var amount: Int
    package var reference: String
    package var note: String
    package init(amount: Int, reference: String, note: String) {
        self.amount = amount
        self.reference = reference
        self.note = note
    }
}

package struct Debited: Event, Equatable {
    package static let typeName = "Debited"
    package var amount: Int
    package init(amount: Int) { self.amount = amount }
}

package enum WalletEvent: EventFamily {
    case credited(Credited)
    case debited(Debited)
    package static let members: [EventMember<WalletEvent>] = [
        .init(Credited.self, WalletEvent.credited), .init(Debited.self, WalletEvent.debited),
    ]
    package var event: any Event {
        switch self {
        case .credited(let e): e
        case .debited(let e): e
        }
    }
}

package struct Wallet: Aggregate {
    package typealias Event = WalletEvent
    package enum Rejection: Error, Equatable { case insufficientFunds(balance: Int) }
    package static let category = "wallet"
    package var balance = 0
    package init() {}
    package mutating func apply(_ event: WalletEvent) {
        switch event {
        case .credited(let e): balance += e.amount
        case .debited(let e): balance -= e.amount
        }
    }
}

package struct Credit: Command {
    package typealias Target = Wallet
    package var id: String
    package var amount: Int
    package var reference: String
    package init(id: String, amount: Int, reference: String) {
        self.id = id
        self.amount = amount
        self.reference = reference
    }
}

package struct Debit: Command {
    package typealias Target = Wallet
    package var id: String
    package var amount: Int
    package init(id: String, amount: Int) {
        self.id = id
        self.amount = amount
    }
}

package func walletApp(_ store: any EventStore) throws -> BackstageApp {
    var router = Router()
    try router.route(Credit.self, id: \.id) { _, c in
        [.credited(Credited(amount: c.amount, reference: c.reference, note: "credit of \(c.amount)"))]
    }
    try router.route(Debit.self, id: \.id) { wallet, c throws(Wallet.Rejection) in
        guard wallet.balance >= c.amount else { throw .insufficientFunds(balance: wallet.balance) }
        return [.debited(Debited(amount: c.amount))]
    }
    return BackstageApp(store: store, router: router)
}

/// Dispatches `command` with command id `id` `copies` times at once, spread over `apps` (a
/// client retrying through several application instances); the outcomes, in completion order.
package func dispatchRetried(
    _ command: Credit, id: UUID, copies: Int = 50, over apps: [BackstageApp]
) async -> [Result<Dispatched<Wallet>, any Error>] {
    await withTaskGroup(of: Result<Dispatched<Wallet>, any Error>.self) { group in
        for i in 0..<copies {
            let app = apps[i % apps.count]
            group.addTask {
                do {
                    return .success(try await app.dispatch(command, options: DispatchOptions(commandID: id)))
                } catch { return .failure(error) }
            }
        }
        return await group.reduce(into: []) { $0.append($1) }
    }
}
