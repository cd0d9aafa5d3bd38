// The code of the "Evolving events" article (Backstage.docc/EvolvingEvents.md), compiled inside
// namespaces (one per step of the story) and read back through the codec.
import Backstage
import Foundation
import Testing

/// The article's "Add a field" step: `TicketSold` v2 gains a price.
enum EvolvingEventsV2 {
    public struct TicketSold: Event, Hashable {
        public static let typeName = "TicketSold"
        public static let schemaVersion = 2  // was 1
        public var showID: String
        public var ticketID: String
        public var buyer: String
        public var price: Int  // new
    }

    struct TicketSoldV1: Decodable, Sendable {
        var showID: String
        var ticketID: String
        var buyer: String
    }

    enum ShowEvent: EventFamily, Hashable {
        case ticketSold(TicketSold)
        static let members: [EventMember<ShowEvent>] = [EventMember(TicketSold.self, ShowEvent.ticketSold)]

        public static let upcasters: [Upcaster<ShowEvent>] = [
            Upcaster(from: "TicketSold", version: 1, as: TicketSoldV1.self) { old in
                .ticketSold(TicketSold(showID: old.showID, ticketID: old.ticketID, buyer: old.buyer, price: 0))
            }
        ]
    }
}

/// The article's second step: `TicketSold` v3 adds a currency; v1 leads into v2, and a renamed type.
enum EvolvingEventsV3 {
    public struct TicketSold: Event, Hashable {
        public static let typeName = "TicketSold"
        public static let schemaVersion = 3
        public var showID: String
        public var ticketID: String
        public var buyer: String
        public var price: Int
        public var currency: String
    }

    struct TicketSoldV1: Decodable, Sendable {
        var showID: String
        var ticketID: String
        var buyer: String
    }
    struct TicketSoldV2: Codable, Sendable {
        var showID: String
        var ticketID: String
        var buyer: String
        var price: Int
    }

    enum ShowEvent: EventFamily, Hashable {
        case ticketSold(TicketSold)
        static let members: [EventMember<ShowEvent>] = [EventMember(TicketSold.self, ShowEvent.ticketSold)]

        public static let upcasters: [Upcaster<ShowEvent>] = [
            // v1 -> v2 (a stored shape, read next by the v2 upcaster)
            Upcaster(from: "TicketSold", version: 1, as: TicketSoldV1.self, to: "TicketSold", version: 2) { old in
                TicketSoldV2(showID: old.showID, ticketID: old.ticketID, buyer: old.buyer, price: 0)
            },
            // v2 -> current (v3)
            Upcaster(from: "TicketSold", version: 2, as: TicketSoldV2.self) { old in
                .ticketSold(
                    TicketSold(
                        showID: old.showID, ticketID: old.ticketID, buyer: old.buyer, price: old.price, currency: "EUR")
                )
            },
            .renamed(from: "SeatSold", version: 1, to: "TicketSold", version: 1),
        ]
    }
}

@Suite("Article: evolving events")
struct EvolvingEventsArticle {
    @Test("old shapes and old names are read as the current event")
    func upcasting() async throws {
        let store = InMemoryEventStore()
        let v1 = Data(#"{"buyer":"ada","showID":"hamlet","ticketID":"A1"}"#.utf8)
        _ = try await store.append(
            [
                EventData(type: "TicketSold", schemaVersion: 1, data: v1),
                EventData(type: "SeatSold", schemaVersion: 1, data: v1),
            ], to: "show-hamlet", expected: .noStream, commandID: nil)
        let stored = try await store.readStream("show-hamlet", from: 1, direction: .forward, limit: 10)
        let v2 = try EventCodec<EvolvingEventsV2.ShowEvent>()
        #expect(
            try v2.decode(stored[0]) == .ticketSold(.init(showID: "hamlet", ticketID: "A1", buyer: "ada", price: 0)))
        let v3 = try EventCodec<EvolvingEventsV3.ShowEvent>()
        let expected = EvolvingEventsV3.ShowEvent.ticketSold(
            .init(showID: "hamlet", ticketID: "A1", buyer: "ada", price: 0, currency: "EUR"))
        #expect(try stored.map { try v3.decode($0) } == [expected, expected])
    }
}
