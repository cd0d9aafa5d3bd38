// A family declared with `@EventFamily`, compiled by the real compiler and used end to end: its
// generated `members` decode stored events, its generated `event` encodes them, and commands that
// name no `Target` route and dispatch.
import Backstage
import BackstageMacros
import Foundation
import Testing

public struct DoorOpened: Event, Hashable {
    public static let typeName = "DoorOpened"
    public var doorID: String
}

public struct DoorClosed: Event, Hashable {
    public static let typeName = "DoorClosed"
    public static let schemaVersion = 2
    public var doorID: String
    public var by: String
}

/// Version 1 of `DoorClosed` had no `by`.
struct DoorClosedV1: Decodable, Sendable {
    var doorID: String
}

public struct DoorLocked: Event, Hashable {
    public static let typeName = "DoorLocked"
    public var doorID: String
}

/// Public: the generated `members` and `event` must be public too, or this does not compile.
@EventFamily
public enum DoorEvent: Hashable {
    case opened(DoorOpened)
    case closed(by: DoorClosed)
    case locked(DoorLocked)

    // Declared by hand next to the generated members.
    public static let upcasters: [Upcaster<DoorEvent>] = [
        Upcaster(from: "DoorClosed", version: 1, as: DoorClosedV1.self) { old in
            .closed(by: DoorClosed(doorID: old.doorID, by: "unknown"))
        }
    ]
}

/// A family that names the protocol itself as well: the macro adds no second conformance.
@EventFamily
enum BellEvent: EventFamily {
    case rang(DoorOpened)
}

/// A generic family: the generated `members` is computed (a generic type has no static stored property).
@EventFamily
enum Wrapped<Payload: Event> {
    case one(Payload)
}

enum DoorError: Error, Hashable {
    case alreadyOpen, locked
}

struct Door: Aggregate {
    typealias Rejection = DoorError
    static let category = "door"
    var open = false
    var locked = false

    mutating func apply(_ event: DoorEvent) {
        switch event {
        case .opened: open = true
        case .closed: open = false
        case .locked: locked = true
        }
    }
}

/// No `typealias Target`: inferred from `decide`'s parameter, with a typed rejection.
struct OpenDoor: DecidingCommand {
    var doorID: String
    var aggregateID: String { doorID }

    func decide(_ door: Door) throws(DoorError) -> [DoorEvent] {
        guard !door.locked else { throw .locked }
        guard !door.open else { throw .alreadyOpen }
        return [.opened(DoorOpened(doorID: doorID))]
    }
}

/// No `typealias Target` and no `throws`.
struct CloseAndLockDoor: DecidingCommand {
    var doorID: String
    var aggregateID: String { doorID }

    func decide(_ door: Door) -> [DoorEvent] {
        [.closed(by: DoorClosed(doorID: doorID, by: "ada")), .locked(DoorLocked(doorID: doorID))]
    }
}

@Suite("@EventFamily at run time")
struct EventFamilyRuntimeTests {
    @Test("members list every case in order, with the payload's type name and version")
    func members() {
        #expect(DoorEvent.members.map(\.typeName) == ["DoorOpened", "DoorClosed", "DoorLocked"])
        #expect(DoorEvent.members.map(\.schemaVersion) == [1, 2, 1])
        #expect(BellEvent.members.map(\.typeName) == ["DoorOpened"])
        #expect(Wrapped<DoorLocked>.members.map(\.typeName) == ["DoorLocked"])
    }

    @Test("event returns each case's payload")
    func event() {
        let closed = DoorClosed(doorID: "d", by: "ada")
        #expect(DoorEvent.opened(DoorOpened(doorID: "d")).event as? DoorOpened == DoorOpened(doorID: "d"))
        #expect(DoorEvent.closed(by: closed).event as? DoorClosed == closed)
        #expect(DoorEvent.locked(DoorLocked(doorID: "d")).event as? DoorLocked == DoorLocked(doorID: "d"))
        #expect(BellEvent.rang(DoorOpened(doorID: "b")).event as? DoorOpened == DoorOpened(doorID: "b"))
        #expect(Wrapped.one(DoorLocked(doorID: "w")).event as? DoorLocked == DoorLocked(doorID: "w"))
    }

    @Test("the codec encodes and decodes every case, and the hand-written upcaster still reads v1")
    func codec() throws {
        let codec = try EventCodec<DoorEvent>()
        let values: [DoorEvent] = [
            .opened(DoorOpened(doorID: "d")), .closed(by: DoorClosed(doorID: "d", by: "ada")),
            .locked(DoorLocked(doorID: "d")),
        ]
        for (index, value) in values.enumerated() {
            let data = try codec.encode(value, metadata: EventMetadata())
            #expect(data.type == type(of: value.event).typeName)
            let recorded = RecordedEvent(
                position: Int64(index + 1), stream: "door-d", streamVersion: Int64(index + 1), id: data.id,
                type: data.type, schemaVersion: data.schemaVersion, data: data.data, metadata: data.metadata,
                recordedAt: Date())
            #expect(try codec.decode(recorded) == value)
        }
        let v1 = RecordedEvent(
            position: 9, stream: "door-d", streamVersion: 4, id: UUID(), type: "DoorClosed", schemaVersion: 1,
            data: Data(#"{"doorID":"d"}"#.utf8), metadata: EventMetadata(), recordedAt: Date())
        #expect(try codec.decode(v1) == .closed(by: DoorClosed(doorID: "d", by: "unknown")))
    }

    @Test("commands without typealias Target route, dispatch and reject with the aggregate's type")
    func dispatch() async throws {
        let app = BackstageApp(
            store: InMemoryEventStore(), router: try Router(OpenDoor.self, CloseAndLockDoor.self))
        let opened = try await app.dispatch(OpenDoor(doorID: "front"))
        #expect(opened.events == [.opened(DoorOpened(doorID: "front"))])
        guard case .failure(let again) = try await app.attempt(OpenDoor(doorID: "front")) else {
            Issue.record("a second OpenDoor was not rejected")
            return
        }
        #expect(again == .alreadyOpen)
        try await app.dispatch(CloseAndLockDoor(doorID: "front"))
        let history = try await app.history(Door.self, id: "front")
        #expect(
            history.map(\.event) == [
                .opened(DoorOpened(doorID: "front")), .closed(by: DoorClosed(doorID: "front", by: "ada")),
                .locked(DoorLocked(doorID: "front")),
            ])
        #expect(try await app.attempt(OpenDoor(doorID: "front")).failureValue == .locked)
    }
}

extension Result {
    /// The failure, if any.
    var failureValue: Failure? {
        if case .failure(let failure) = self { failure } else { nil }
    }
}
