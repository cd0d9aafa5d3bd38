import Backstage
import Foundation
import Testing

struct NoCategory: Aggregate {
    typealias Event = CounterEvent
    static let category = ""
    init() {}
    mutating func apply(_ event: CounterEvent) {}
}

struct DashedCategory: Aggregate {
    typealias Event = CounterEvent
    static let category = "bad-category"
    init() {}
    mutating func apply(_ event: CounterEvent) {}
}

enum TwiceEvent: EventFamily {
    case a(CounterIncremented)
    case b(CounterIncremented)
    static let members: [EventMember<TwiceEvent>] = [
        .init(CounterIncremented.self, TwiceEvent.a), .init(CounterIncremented.self, TwiceEvent.b),
    ]
}

struct TwiceAggregate: Aggregate {
    typealias Event = TwiceEvent
    static let category = "twice"
    init() {}
    mutating func apply(_ event: TwiceEvent) {}
}

/// An upcaster that claims the version the current member already reads.
enum ClashingUpcaster: EventFamily {
    case deposited(MoneyDeposited)
    static let members: [EventMember<ClashingUpcaster>] = [.init(MoneyDeposited.self, ClashingUpcaster.deposited)]
    static let upcasters: [Upcaster<ClashingUpcaster>] = [
        Upcaster(from: "MoneyDeposited", version: 2, as: MoneyDepositedV1.self) {
            .deposited(MoneyDeposited(amount: $0.cents, note: ""))
        }
    ]
}

@Suite("Router")
struct RouterTests {
    @Test("routing a command type twice is an error")
    func duplicateRoute() throws {
        var router = Router()
        try router.route(Deposit.self, id: \.id) { a, c throws(Account.Rejection) in try a.deposit(c) }
        #expect(throws: RoutingError.duplicateRoute(command: "Deposit")) {
            try router.route(Deposit.self, id: \.id) { a, c throws(Account.Rejection) in try a.deposit(c) }
        }
    }

    @Test("deciding commands are routed by type; routing one twice is an error")
    func decidingCommands() throws {
        var router = try Router(PayAndPass.self)
        #expect(throws: RoutingError.duplicateRoute(command: "PayAndPass")) {
            try router.route(PayAndPass.self)
        }
        #expect(throws: RoutingError.duplicateRoute(command: "PayAndPass")) {
            _ = try Router(PayAndPass.self, PayAndPass.self)
        }
    }

    @Test("a command without a route is a clear error, and nothing is stored")
    func noRoute() async throws {
        var router = Router()
        try router.route(Deposit.self, id: \.id) { a, c throws(Account.Rejection) in try a.deposit(c) }
        let store = InMemoryEventStore()
        let app = BackstageApp(store: store, router: router)
        let error = await #expect(throws: RoutingError.noRoute(command: "Withdraw")) {
            try await app.dispatch(Withdraw(id: "a", amount: 1))
        }
        #expect(error.map { "\($0)" }?.contains("no route for command Withdraw") == true)
        #expect(try await store.headPosition() == .start)
    }

    @Test("a category must be non-empty and contain no dash")
    func badCategory() {
        var router = Router()
        #expect(throws: RoutingError.invalidCategory(aggregate: "NoCategory", category: "")) {
            try router.register(NoCategory.self)
        }
        #expect(throws: RoutingError.invalidCategory(aggregate: "DashedCategory", category: "bad-category")) {
            try router.register(DashedCategory.self)
        }
    }

    @Test("two aggregates cannot share a category")
    func categoryTwice() throws {
        var router = Router()
        try router.route(Increment.self, id: \.id) { _, _ in [.incremented(CounterIncremented(by: 1))] }
        #expect(throws: RoutingError.categoryInUse(category: "counter", aggregates: ["Counter", "CounterV2"])) {
            try router.route(IncrementV2.self, id: \.id) { _, _ in [] }
        }
        // Registering the same aggregate again is fine.
        try router.register(Counter.self)
    }

    @Test("an event family that reads one type and version twice is rejected")
    func inconsistentFamily() {
        var router = Router()
        #expect(
            throws: RoutingError.invalidEventFamily(
                .duplicateMember(family: "TwiceEvent", type: "CounterIncremented", schemaVersion: 1))
        ) {
            try router.register(TwiceAggregate.self)
        }
        #expect(
            throws: CodecError.duplicateMember(family: "ClashingUpcaster", type: "MoneyDeposited", schemaVersion: 2)
        ) {
            _ = try EventCodec<ClashingUpcaster>()
        }
    }

    @Test("stream ids and command names")
    func names() {
        #expect(Account.streamID("42") == "account-42")
        #expect(Deposit.commandName == "Deposit")
    }
}

@Suite("EventCodec")
struct CodecTests {
    func recorded(_ type: String, version: Int, json: String, position: Int64 = 42) -> RecordedEvent {
        RecordedEvent(
            position: position, stream: "account-x", streamVersion: 1, id: UUIDv7.next(), type: type,
            schemaVersion: version, data: Data(json.utf8), metadata: EventMetadata(), recordedAt: Date())
    }

    @Test("encodes the stable type name, the schema version and the metadata")
    func encode() throws {
        let codec = try EventCodec<AccountEvent>()
        let id = UUIDv7.next()
        let metadata = EventMetadata(commandID: id, fields: ["user": "ana"])
        let data = try codec.encode(.deposited(MoneyDeposited(amount: 5, note: "n")), metadata: metadata, id: id)
        #expect(data.id == id)
        #expect(data.type == "MoneyDeposited")
        #expect(data.schemaVersion == 2)
        #expect(data.metadata == metadata)
        #expect(try JSONDecoder().decode(MoneyDeposited.self, from: data.data) == MoneyDeposited(amount: 5, note: "n"))
        let back = try codec.decode(
            recorded(data.type, version: data.schemaVersion, json: String(decoding: data.data, as: UTF8.self)))
        #expect(back == .deposited(MoneyDeposited(amount: 5, note: "n")))
    }

    @Test("upcasts an old version to the current event")
    func upcast() throws {
        let codec = try EventCodec<AccountEvent>()
        let event = try codec.decode(recorded("MoneyDeposited", version: 1, json: #"{"cents":250}"#))
        #expect(event == .deposited(MoneyDeposited(amount: 250, note: "upcast from v1")))
        #expect(codec.typeNames == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"])
        #expect(codec.reads(type: "MoneyDeposited"))
        #expect(!codec.reads(type: "CounterIncremented"))
    }

    @Test("an unknown type or version is a typed error with the position")
    func unknown() throws {
        let codec = try EventCodec<AccountEvent>()
        #expect(throws: CodecError.unknownEvent(family: "AccountEvent", type: "Nope", schemaVersion: 1, position: 42)) {
            try codec.decode(recorded("Nope", version: 1, json: "{}"))
        }
        #expect(
            throws: CodecError.unknownEvent(
                family: "AccountEvent", type: "MoneyDeposited", schemaVersion: 3, position: 7)
        ) {
            try codec.decode(recorded("MoneyDeposited", version: 3, json: #"{"amount":1,"note":""}"#, position: 7))
        }
    }

    @Test("malformed JSON is a typed error with the position", arguments: [#"{not json"#, #"{"owner":5}"#, "", "[]"])
    func malformed(_ json: String) throws {
        let codec = try EventCodec<AccountEvent>()
        do {
            _ = try codec.decode(recorded("AccountOpened", version: 1, json: json, position: 99))
            Issue.record("decoding \(json) succeeded")
        } catch .malformed(let type, let version, let position, let reason) {
            #expect(type == "AccountOpened")
            #expect(version == 1)
            #expect(position == 99)
            #expect(!reason.isEmpty)
        } catch {
            Issue.record("expected .malformed, got \(error)")
        }
    }

    @Test("RecordedEvent.decode(as:) reads its own type, throws for its other versions, upcasts with a family")
    func decodeAs() throws {
        let e = recorded("AccountOpened", version: 1, json: #"{"owner":"ana"}"#)
        #expect(try e.decode(as: AccountOpened.self) == AccountOpened(owner: "ana"))
        #expect(try e.decode(as: MoneyWithdrawn.self) == nil)
        // Its own type at another version: never nil; it throws without the family and upcasts with it.
        #expect(throws: CodecError.self) {
            try recorded("MoneyDeposited", version: 1, json: #"{"cents":1}"#).decode(as: MoneyDeposited.self)
        }
        #expect(
            try recorded("MoneyDeposited", version: 1, json: #"{"cents":1}"#).decode(
                as: MoneyDeposited.self, in: AccountEvent.self) == MoneyDeposited(amount: 1, note: "upcast from v1"))
        #expect(throws: CodecError.self) {
            try recorded("AccountOpened", version: 1, json: "{").decode(as: AccountOpened.self)
        }
    }

    @Test("events stored in an old version load through the upcaster")
    func upcastThroughTheRuntime() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        let stream = Account.streamID("old")
        _ = try await store.append(
            [
                EventData(type: "AccountOpened", data: Data(#"{"owner":"old"}"#.utf8)),
                EventData(type: "MoneyDeposited", schemaVersion: 1, data: Data(#"{"cents":70}"#.utf8)),
            ], to: stream, expected: .noStream, commandID: nil)
        #expect(try await app.load(Account.self, id: "old").state.balance == 70)
        let result = try await app.dispatch(Deposit(id: "old", amount: 5))
        #expect(result.state.balance == 75)
        #expect(result.version == 3)
        let history = try await app.history(Account.self, id: "old").map(\.event)
        #expect(
            history == [
                .opened(AccountOpened(owner: "old")), .deposited(MoneyDeposited(amount: 70, note: "upcast from v1")),
                .deposited(MoneyDeposited(amount: 5, note: "")),
            ])
    }

    @Test("a stream with an unknown event fails the dispatch with the codec error")
    func unknownEventInStream() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        _ = try await store.append(
            [
                EventData(type: "AccountOpened", data: Data(#"{"owner":"x"}"#.utf8)),
                EventData(type: "Stranger", data: Data("{}".utf8)),
            ],
            to: Account.streamID("x"), expected: .noStream, commandID: nil)
        await #expect(
            throws: CodecError.unknownEvent(family: "AccountEvent", type: "Stranger", schemaVersion: 1, position: 2)
        ) {
            try await app.dispatch(Deposit(id: "x", amount: 1))
        }
        #expect(try await store.streamVersion(Account.streamID("x")) == 2)
    }
}
