import Backstage
import Foundation

// A tiny seat-hold domain for the process-manager tests on every store and in the workers:
// placing a hold starts a process that acknowledges it at once and schedules its release after
// the hold time; confirming cancels the release; an unconfirmed hold is released.

package struct HoldPlaced: Event {
    package static let typeName = "HoldPlaced"
    package var hold: String
    package init(hold: String) { self.hold = hold }
}
package struct HoldAcknowledged: Event {
    package static let typeName = "HoldAcknowledged"
    package var hold: String
    package init(hold: String) { self.hold = hold }
}
package struct HoldConfirmed: Event {
    package static let typeName = "HoldConfirmed"
    package var hold: String
    package init(hold: String) { self.hold = hold }
}
package struct HoldReleased: Event {
    package static let typeName = "HoldReleased"
    package var hold: String
    package init(hold: String) { self.hold = hold }
}

package enum HoldEvent: EventFamily {
    case placed(HoldPlaced)
    case acknowledged(HoldAcknowledged)
    case confirmed(HoldConfirmed)
    case released(HoldReleased)
    package static let members: [EventMember<HoldEvent>] = [
        .init(HoldPlaced.self, HoldEvent.placed), .init(HoldAcknowledged.self, HoldEvent.acknowledged),
        .init(HoldConfirmed.self, HoldEvent.confirmed), .init(HoldReleased.self, HoldEvent.released),
    ]
    package var event: any Event {
        switch self {
        case .placed(let e): e
        case .acknowledged(let e): e
        case .confirmed(let e): e
        case .released(let e): e
        }
    }
}

package struct Hold: Aggregate {
    package enum Rejection: Error, Equatable, RejectionMarker {
        case notPlaced, alreadyClosed
    }
    package static let category = "hold"
    package var placed = false
    package var acknowledged = 0
    package var closed = false
    package init() {}
    package mutating func apply(_ event: HoldEvent) {
        switch event {
        case .placed: placed = true
        case .acknowledged: acknowledged += 1
        case .confirmed, .released: closed = true
        }
    }
}

package struct PlaceHold: Command, Codable {
    package typealias Target = Hold
    package var hold: String
    package init(hold: String) { self.hold = hold }
}
package struct AcknowledgeHold: Command, Codable {
    package typealias Target = Hold
    package var hold: String
    package init(hold: String) { self.hold = hold }
}
package struct ConfirmHold: Command, Codable {
    package typealias Target = Hold
    package var hold: String
    package init(hold: String) { self.hold = hold }
}
package struct ReleaseHold: Command, Codable {
    package typealias Target = Hold
    package var hold: String
    package init(hold: String) { self.hold = hold }
}

extension Router {
    /// Routes the hold commands.
    package static func holds() throws -> Router {
        var router = Router()
        try router.route(PlaceHold.self, id: \.hold) { _, c in [.placed(HoldPlaced(hold: c.hold))] }
        try router.route(AcknowledgeHold.self, id: \.hold) { s, c in
            guard s.placed else { throw Hold.Rejection.notPlaced }
            return [.acknowledged(HoldAcknowledged(hold: c.hold))]
        }
        try router.route(ConfirmHold.self, id: \.hold) { s, c in
            guard s.placed else { throw Hold.Rejection.notPlaced }
            guard !s.closed else { throw Hold.Rejection.alreadyClosed }
            return [.confirmed(HoldConfirmed(hold: c.hold))]
        }
        try router.route(ReleaseHold.self, id: \.hold) { s, c in
            guard s.placed else { throw Hold.Rejection.notPlaced }
            guard !s.closed else { throw Hold.Rejection.alreadyClosed }
            return [.released(HoldReleased(hold: c.hold))]
        }
        return router
    }
}

extension CommandCatalog {
    /// The hold commands a scheduler dispatches.
    package static var holds: CommandCatalog {
        .of([PlaceHold.self, AcknowledgeHold.self, ConfirmHold.self, ReleaseHold.self])
    }
}

/// The state of one hold's process.
package struct HoldProcessState: Codable, Sendable, Equatable {
    package var events = 0
    package init() {}
}

/// Placing a hold: acknowledge at once, release after `holdTime` unless confirmed.
package struct HoldProcess: ProcessManager {
    package let name = "holds"
    package var holdTime: Duration
    package var options: ProjectionOptions
    package let initialState = HoldProcessState()
    package init(holdTime: Duration = .seconds(600), options: ProjectionOptions = ProjectionOptions()) {
        self.holdTime = holdTime
        self.options = options
    }
    package func route(_ envelope: Envelope<HoldEvent>) -> ProcessRouting {
        switch envelope.event {
        case .placed(let e): .start(e.hold)
        case .acknowledged(let e): .continue(e.hold)
        case .confirmed(let e): .stop(e.hold)
        case .released(let e): .stop(e.hold)
        }
    }
    package func handle(_ envelope: Envelope<HoldEvent>, state: HoldProcessState) throws -> [ProcessAction] {
        switch envelope.event {
        case .placed(let e):
            [
                .dispatch(AcknowledgeHold(hold: e.hold)),
                .schedule(ReleaseHold(hold: e.hold), after: holdTime, key: "release-\(e.hold)"),
            ]
        case .confirmed(let e): [.cancel(key: "release-\(e.hold)")]
        case .acknowledged, .released: []
        }
    }
    package func apply(_ envelope: Envelope<HoldEvent>, to state: inout HoldProcessState) {
        state.events += 1
    }
}
