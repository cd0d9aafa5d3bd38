import Backstage
import Foundation
import Testing

// A box-office-like family whose `TicketSold` went through three shapes and one rename:
// "SeatSold" v1 (renamed) -> "TicketSold" v1 {show, seat} -> v2 {showID, ticketID, price} -> v3 (current).

struct EvoTicketSold: Event, Equatable {
    static let typeName = "TicketSold"
    static let schemaVersion = 3
    var showID: String
    var ticketID: String
    var price: Int
    var currency: String
}

struct EvoTicketSoldV1: Codable, Sendable {
    var show: String
    var seat: String
}

struct EvoTicketSoldV2: Codable, Sendable {
    var showID: String
    var ticketID: String
    var price: Int
}

struct EvoShowScheduled: Event, Equatable {
    static let typeName = "ShowScheduled"
    var showID: String
}

enum EvoShowEvent: EventFamily, Equatable {
    case scheduled(EvoShowScheduled)
    case ticketSold(EvoTicketSold)

    static let members: [EventMember<EvoShowEvent>] = [
        .init(EvoShowScheduled.self, EvoShowEvent.scheduled),
        .init(EvoTicketSold.self, EvoShowEvent.ticketSold),
    ]

    static let upcasters: [Upcaster<EvoShowEvent>] = [
        .renamed(from: "SeatSold", version: 1, to: "TicketSold", version: 1),
        Upcaster(from: "TicketSold", version: 1, as: EvoTicketSoldV1.self, to: "TicketSold", version: 2) { old in
            EvoTicketSoldV2(showID: old.show, ticketID: old.seat, price: 0)
        },
        Upcaster(from: "TicketSold", version: 2, as: EvoTicketSoldV2.self) { old in
            .ticketSold(EvoTicketSold(showID: old.showID, ticketID: old.ticketID, price: old.price, currency: "EUR"))
        },
    ]
}

func storedEvent(_ type: String, version: Int, json: String, position: Int64 = 7) -> RecordedEvent {
    RecordedEvent(
        position: position, stream: "show-1", streamVersion: position, id: UUID(), type: type,
        schemaVersion: version, data: Data(json.utf8), metadata: EventMetadata(), recordedAt: Date())
}

/// A typed handler of the account family that records what it saw.
struct DepositLog: TypedEventHandler {
    let name: String
    let seen: PipeBox<[Int]>
    var decodeFailure: DecodeFailurePolicy = .fail
    var options = HandlerOptions(failurePolicy: FailurePolicy(maxRetries: 0, finalAction: .park))

    func handle(_ envelope: Envelope<AccountEvent>) async throws {
        if case .deposited(let d) = envelope.event { seen.with { $0.append(d.amount) } }
    }
}

/// A typed handler that reads a whole category, so types its family does not know reach it.
struct CategoryDepositLog: TypedEventHandler {
    let name: String
    let seen: PipeBox<[Int]>
    var decodeFailure: DecodeFailurePolicy = .fail
    var filter: EventFilter { EventFilter(categories: [Account.category]) }
    var options = HandlerOptions(failurePolicy: FailurePolicy(maxRetries: 0, finalAction: .park))

    func handle(_ envelope: Envelope<AccountEvent>) async throws {
        if case .deposited(let d) = envelope.event { seen.with { $0.append(d.amount) } }
    }
}

@Suite("Codec: typed consumption and schema evolution")
struct TypedConsumptionTests {
    @Test("upcasters chain v1 -> v2 -> v3 and read a renamed type")
    func chainAndRename() throws {
        let codec = try EventCodec<EvoShowEvent>()
        let current = EvoShowEvent.ticketSold(EvoTicketSold(showID: "s", ticketID: "t", price: 5, currency: "USD"))
        #expect(
            try codec.decode(
                storedEvent(
                    "TicketSold", version: 3, json: #"{"showID":"s","ticketID":"t","price":5,"currency":"USD"}"#))
                == current)
        #expect(
            try codec.decode(storedEvent("TicketSold", version: 2, json: #"{"showID":"s","ticketID":"t","price":5}"#))
                == .ticketSold(EvoTicketSold(showID: "s", ticketID: "t", price: 5, currency: "EUR")))
        let fromV1 = EvoShowEvent.ticketSold(EvoTicketSold(showID: "s", ticketID: "a1", price: 0, currency: "EUR"))
        #expect(try codec.decode(storedEvent("TicketSold", version: 1, json: #"{"show":"s","seat":"a1"}"#)) == fromV1)
        #expect(try codec.decode(storedEvent("SeatSold", version: 1, json: #"{"show":"s","seat":"a1"}"#)) == fromV1)
        #expect(codec.typeNames == ["SeatSold", "TicketSold", "ShowScheduled"])
        #expect(codec.filter == EventFilter(types: ["SeatSold", "TicketSold", "ShowScheduled"]))
        // A malformed old shape names the position and the step that failed.
        #expect(throws: CodecError.self) { try codec.decode(storedEvent("SeatSold", version: 1, json: #"{"show":1}"#)) }
    }

    @Test("decode(as:) never returns nil for its own type: it upcasts with the family or throws")
    func decodeAsContract() throws {
        let v1 = storedEvent("TicketSold", version: 1, json: #"{"show":"s","seat":"a1"}"#)
        #expect(throws: CodecError.self) { try v1.decode(as: EvoTicketSold.self) }
        #expect(
            try v1.decode(as: EvoTicketSold.self, in: EvoShowEvent.self)
                == EvoTicketSold(showID: "s", ticketID: "a1", price: 0, currency: "EUR"))
        let renamed = storedEvent("SeatSold", version: 1, json: #"{"show":"s","seat":"a1"}"#)
        #expect(try renamed.decode(as: EvoTicketSold.self, in: EvoShowEvent.self)?.ticketID == "a1")
        #expect(try renamed.decode(as: EvoShowScheduled.self, in: EvoShowEvent.self) == nil)
        #expect(
            try storedEvent("Other", version: 1, json: "{}").decode(as: EvoTicketSold.self, in: EvoShowEvent.self)
                == nil)
        #expect(throws: CodecError.self) {
            try storedEvent("TicketSold", version: 9, json: "{}").decode(as: EvoTicketSold.self, in: EvoShowEvent.self)
        }
        #expect(
            try renamed.decode(EvoShowEvent.self)
                == .ticketSold(EvoTicketSold(showID: "s", ticketID: "a1", price: 0, currency: "EUR")))
    }

    @Test(
        "an event stored at schema version 1 is read as the current shape by an aggregate, a handler and a projection")
    func oldEventOnEveryReadPath() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        _ = try await store.append(
            [
                EventData(type: "AccountOpened", data: Data(#"{"owner":"old"}"#.utf8)),
                EventData(type: "MoneyDeposited", schemaVersion: 1, data: Data(#"{"cents":70}"#.utf8)),
            ], to: Account.streamID("old"), expected: .noStream, commandID: nil)
        _ = try await store.append(
            [EventData(type: "Unrelated", data: Data("{}".utf8))], to: "other-1", expected: .noStream, commandID: nil)
        try await app.dispatch(Deposit(id: "old", amount: 5))

        // The aggregate.
        #expect(try await app.load(Account.self, id: "old").state.balance == 75)
        // A typed handler and a typed projection.
        let seen = PipeBox<[Int]>([])
        let handler = DepositLog(name: "deposits", seen: seen)
        #expect(handler.filter == EventFilter(types: ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]))
        let balances = try InMemoryProjection(name: "balances", consuming: AccountEvent.self, initial: [String: Int]())
        {
            balances, envelope in
            if case .deposited(let d) = envelope.event { balances[envelope.stream, default: 0] += d.amount }
            #expect(envelope.position == envelope.recorded.position)
        }
        let service = try PipelineService(app: app, handlers: [handler], projections: [balances])
        let running = RunningService(service)
        try await service.waitUntilProcessed()
        try await running.stop()
        #expect(seen.value == [70, 5])
        #expect(balances.state == [Account.streamID("old"): 75])
        #expect(try await service.parkedEvents().isEmpty)
    }

    @Test(
        "unknown types and versions and malformed JSON: .fail parks them with an error naming the position; .skip moves on"
    )
    func decodeFailurePolicies() async throws {
        let store = InMemoryEventStore()
        let stream = Account.streamID("bad")
        _ = try await store.append(
            [
                EventData(type: "MoneyDeposited", schemaVersion: 2, data: Data(#"{"amount":1,"note":""}"#.utf8)),
                EventData(type: "MoneyDeposited", schemaVersion: 7, data: Data("{}".utf8)),  // unknown version
                EventData(type: "MoneyDeposited", schemaVersion: 2, data: Data("{not json".utf8)),  // malformed
                EventData(type: "MoneyDeposited", schemaVersion: 2, data: Data(#"{"amount":2,"note":""}"#.utf8)),
                EventData(type: "Stranger", data: Data("{}".utf8)),  // unknown type
            ], to: stream, expected: .noStream, commandID: nil)
        let failing = PipeBox<[Int]>([])
        let skipping = PipeBox<[Int]>([])
        let projected = try InMemoryProjection(
            name: "skipper", consuming: AccountEvent.self, decodeFailure: .skip, initial: 0
        ) { total, envelope in
            if case .deposited(let d) = envelope.event { total += d.amount }
        }
        let service = try PipelineService(
            store: store,
            handlers: [
                DepositLog(name: "failer", seen: failing),
                DepositLog(name: "skipper-handler", seen: skipping, decodeFailure: .skip),
                CategoryDepositLog(name: "category-failer", seen: PipeBox([])),
                CategoryDepositLog(name: "category-skipper", seen: PipeBox([]), decodeFailure: .skip),
            ], projections: [projected])
        let running = RunningService(service)
        try await service.waitUntilProcessed()
        #expect(failing.value == [1, 2])
        #expect(skipping.value == [1, 2])
        #expect(projected.state == 3)
        let parked = try await service.parkedEvents(subscription: "failer")
        #expect(parked.map(\.event.position) == [2, 3])
        #expect(parked.allSatisfy { $0.error.contains("position \($0.event.position)") })
        #expect(try await service.parkedEvents(subscription: "skipper-handler").isEmpty)
        // An unknown type (here only when the filter lets it through) follows the same policy.
        let unknown = try await service.parkedEvents(subscription: "category-failer")
        #expect(unknown.map(\.event.position) == [2, 3, 5])
        #expect(unknown.last?.error.contains("'Stranger'") == true)
        #expect(try await service.parkedEvents(subscription: "category-skipper").isEmpty)
        try await running.stop()
    }
}
