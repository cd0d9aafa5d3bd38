import Backstage
import BoxOffice
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

/// The HTTP API against a real server listening on a loopback port.
@Suite("HTTP API")
struct APITests {
    struct Reply: Sendable {
        var status: HTTPResponse.Status
        var json: [String: any Sendable]
    }

    /// Runs `test` with a client of a live server over a fresh in-memory store.
    func withServer(_ test: @Sendable (any TestClientProtocol, BackstageApp) async throws -> Void) async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try .boxOffice())
        var logger = Logger(label: "box-office-test")
        logger.logLevel = .warning
        let server = BoxOfficeAPI.application(app: app, port: 0, logger: logger)
        try await server.test(.live) { client in
            #expect(client.port != nil && client.port != 0, "a real server on a loopback port")
            try await test(client, app)
        }
    }

    @Test func aShowIsScheduledFilledSoldAndRefunded() async throws {
        try await withServer { client, app in
            var reply = try await client.send(.post, "/shows", ["id": "s1", "title": "Hamlet", "capacity": 2])
            #expect(reply.status == .created)
            #expect(reply.show["capacity"] as? Int == 2)
            #expect(reply.eventTypes == ["ShowScheduled"])

            reply = try await client.send(.post, "/shows/s1/tickets", ["ticketID": "t1"])
            #expect(reply.status == .created)
            #expect(reply.events.first?["data"] as? [String: String] == ["showID": "s1", "ticketID": "t1"])

            reply = try await client.send(.post, "/shows/s1/sell", ["buyer": "ada"])
            #expect(reply.status == .ok)
            #expect(reply.eventTypes == ["TicketSold"])
            #expect(reply.show["ticketsSold"] as? Int == 1)

            reply = try await client.send(.post, "/shows/s1/tickets/t1/refund")
            #expect(reply.status == .ok)
            #expect(reply.eventTypes == ["TicketRefunded"])

            reply = try await client.send(.get, "/shows/s1")
            #expect(reply.status == .ok)
            #expect(reply.json["version"] as? Int == 4)
            #expect(reply.json["tickets"] as? Int == 1)
            #expect(reply.json["ticketsOnSale"] as? Int == 1)

            reply = try await client.send(.get, "/shows/s1/tickets")
            #expect(reply.status == .ok)
            #expect(reply.json["onSale"] as? [String] == ["t1"])
            #expect(reply.json["tickets"] as? [String: String] == ["t1": "refunded"])

            reply = try await client.send(.get, "/shows/s1/history")
            #expect(reply.status == .ok)
            let history = try #require(reply.json["events"] as? [[String: any Sendable]])
            #expect(
                history.map { $0["type"] as? String } == [
                    "ShowScheduled", "TicketAdded", "TicketSold", "TicketRefunded",
                ])
            #expect(history.map { $0["version"] as? Int } == [1, 2, 3, 4])
            #expect(try await app.load(Show.self, id: "s1").state.tickets == ["t1": .refunded], "the API stored it")
        }
    }

    @Test func rejectionsAnswer4xxWithAJSONError() async throws {
        try await withServer { client, _ in
            _ = try await client.send(.post, "/shows", ["id": "s1", "title": "Hamlet", "capacity": 1])

            var reply = try await client.send(.post, "/shows/s1/sell", ["buyer": "ada"])
            #expect(reply.status == .conflict)
            #expect(reply.json["error"] as? String == "soldOut")
            #expect(reply.json["message"] as? String == "show s1 is sold out")

            _ = try await client.send(.post, "/shows/s1/tickets", ["ticketID": "t1"])
            reply = try await client.send(.post, "/shows/s1/tickets", ["ticketID": "t2"])
            #expect(reply.status == .conflict)
            #expect(reply.json["error"] as? String == "capacityReached")

            reply = try await client.send(.post, "/shows/s1/tickets/t1/refund")
            #expect(reply.status == .conflict)
            #expect(reply.json["error"] as? String == "notSold")

            reply = try await client.send(.post, "/shows", ["id": "s2", "title": "Empty", "capacity": 0])
            #expect(reply.status == .unprocessableContent)
            #expect(reply.json["error"] as? String == "invalidCapacity")

            reply = try await client.send(.post, "/shows/s1/sell", ["nobody": "x"])
            #expect(reply.status == .badRequest, "a body that does not decode")
            #expect(reply.json["error"] as? String == "invalidRequest")
            #expect(reply.json["message"] as? String == "the field 'buyer' is missing")
        }
    }

    @Test func unknownShowsAnswer404() async throws {
        try await withServer { client, _ in
            for (method, path) in [(HTTPRequest.Method.get, "/shows/nope"), (.get, "/shows/nope/history")] {
                let reply = try await client.send(method, path)
                #expect(reply.status == .notFound)
                #expect(reply.json["error"] as? String == "unknownShow")
                #expect(reply.json["message"] as? String == "show nope is not scheduled")
            }
            var reply = try await client.send(.post, "/shows/nope/sell", ["buyer": "ada"])
            #expect(reply.status == .notFound)
            #expect(reply.json["error"] as? String == "unknownShow")

            _ = try await client.send(.post, "/shows", ["id": "s1", "title": "Hamlet", "capacity": 1])
            reply = try await client.send(.post, "/shows/s1/tickets/t9/refund")
            #expect(reply.status == .notFound)
            #expect(reply.json["error"] as? String == "unknownTicket")
        }
    }

    @Test func anIdempotencyKeyMakesARetryReturnTheOriginalResult() async throws {
        try await withServer { client, app in
            _ = try await client.send(.post, "/shows", ["id": "s1", "title": "Hamlet", "capacity": 3])
            for ticket in ["t1", "t2", "t3"] {
                _ = try await client.send(.post, "/shows/s1/tickets", ["ticketID": ticket])
            }
            let key = UUID()
            let first = try await client.send(.post, "/shows/s1/sell", ["buyer": "ada"], key: key.uuidString)
            #expect(first.status == .ok)
            #expect(first.json["duplicate"] as? Bool == false)
            #expect(first.json["commandID"] as? String == key.uuidString)

            let retry = try await client.send(.post, "/shows/s1/sell", ["buyer": "ada"], key: key.uuidString)
            #expect(retry.status == .ok)
            #expect(retry.json["duplicate"] as? Bool == true)
            #expect(
                retry.events.first?["data"] as? [String: String] == first.events.first?["data"] as? [String: String])
            #expect(retry.events.first?["position"] as? Int == first.events.first?["position"] as? Int)

            let other = try await client.send(.post, "/shows/s1/sell", ["buyer": "ada"], key: UUID().uuidString)
            #expect(other.json["duplicate"] as? Bool == false)
            #expect(try await app.load(Show.self, id: "s1").state.ticketsSold == 2, "the retry sold nothing")

            let bad = try await client.send(.post, "/shows/s1/sell", ["buyer": "ada"], key: "not-a-uuid")
            #expect(bad.status == .badRequest)
            #expect(bad.json["error"] as? String == "invalidIdempotencyKey")
            #expect(try await app.load(Show.self, id: "s1").state.ticketsSold == 2)
        }
    }
}

extension TestClientProtocol {
    /// Sends a request with a JSON body and decodes the JSON reply.
    func send(
        _ method: HTTPRequest.Method, _ uri: String, _ body: [String: any Sendable]? = nil, key: String? = nil,
        headers extra: HTTPFields = [:]
    ) async throws -> APITests.Reply {
        var headers: HTTPFields = [.contentType: "application/json"]
        headers.append(contentsOf: extra)
        if let key { headers[HTTPField.Name("Idempotency-Key")!] = key }
        let data = try body.map { try JSONSerialization.data(withJSONObject: $0) }
        let response = try await execute(
            uri: uri, method: method, headers: headers, body: data.map { ByteBuffer(bytes: $0) })
        let bytes = Data(response.body.readableBytesView)
        let json = bytes.isEmpty ? [:] : try JSONSerialization.jsonObject(with: bytes) as? [String: any Sendable]
        return APITests.Reply(status: response.status, json: json ?? [:])
    }
}

extension APITests.Reply {
    var show: [String: any Sendable] { json["show"] as? [String: any Sendable] ?? [:] }
    var events: [[String: any Sendable]] { json["events"] as? [[String: any Sendable]] ?? [] }
    var eventTypes: [String] { events.compactMap { $0["type"] as? String } }
}
