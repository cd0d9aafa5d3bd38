import Backstage

// The tally: the smallest aggregate for pipeline and consistency tests (one event, one command
// adding to a total). Shared by the core and SQLite test targets; its events are what
// `SQLiteSumsModel` sums.

/// A tally was bumped by `by`.
package struct TallyBumped: Event {
    package static let typeName = "TallyBumped"
    package var by: Int
    package init(by: Int) { self.by = by }
}

/// The tally's events.
package enum TallyEvent: EventFamily {
    case bumped(TallyBumped)
    package static let members: [EventMember<TallyEvent>] = [.init(TallyBumped.self, TallyEvent.bumped)]
}

/// A total, in streams `tally-<id>`.
package struct Tally: Aggregate {
    package static let category = "tally"
    package var total = 0
    package init() {}
    package mutating func apply(_ event: TallyEvent) {
        switch event {
        case .bumped(let e): total += e.by
        }
    }
}

/// Adds `by` to tally `id`.
package struct Bump: Command {
    package typealias Target = Tally
    package var id: String
    package var by: Int
    package init(id: String, by: Int) {
        self.id = id
        self.by = by
    }
}

/// An app over `store` that routes ``Bump``.
package func tallyApp(_ store: any EventStore) throws -> BackstageApp {
    var router = Router()
    try router.route(Bump.self, id: \.id) { _, c in [.bumped(TallyBumped(by: c.by))] }
    return BackstageApp(store: store, router: router)
}
