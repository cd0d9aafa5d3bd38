import Backstage
import BoxOffice
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

/// `serve`'s application with its read models: queries answer from the projections' tables, and a
/// read-your-writes request header makes a command wait for them.
@Suite("Serve with read models")
struct ServeTests {
    /// Runs `test` against a live server over an SQLite file, with the read models and the receipt
    /// sender running in a pipeline service next to it.
    func withServer(_ test: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-serve-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = try BoxOfficeDatabase.open(
            .sqlite(path: directory.appendingPathComponent("s.sqlite").path))
        let app = BackstageApp(store: database.store, router: try .boxOffice())
        // A long batch timeout: without waiting, a query right after a command would not see it.
        let readModels = try await BoxOfficeReadModels(
            database: database, options: ProjectionOptions(batchTimeout: .milliseconds(300)), failEvery: 0)
        var logger = Logger(label: "box-office-test")
        logger.logLevel = .warning
        let pipelines = try readModels.pipelines(app: app, logger: logger)
        let running = Task { try await pipelines.run() }
        let server = BoxOfficeAPI.application(app: app, readModels: readModels, port: 0, logger: logger)
        do {
            try await server.test(.live) { client in try await test(client) }
        } catch {
            pipelines.stop()
            _ = try? await running.value
            throw error
        }
        pipelines.stop()
        try await running.value
        try await readModels.close()
        try await database.close()
    }

    @Test(arguments: ["Consistency: strong", "X-Read-Your-Writes: true"])
    func aSaleSentWithTheHeaderIsInTheReadModelsAtOnce(header: String) async throws {
        let parts = header.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
        let headers: HTTPFields = [HTTPField.Name(parts[0])!: parts[1]]
        try await withServer { client in
            _ = try await client.send(.post, "/shows", ["id": "gala", "title": "Gala", "capacity": 3])
            _ = try await client.send(.post, "/shows/gala/tickets", ["ticketID": "g1"])
            _ = try await client.send(.post, "/shows/gala/tickets", ["ticketID": "g2"])
            let sale = try await client.send(.post, "/shows/gala/sell", ["buyer": "ada"], headers: headers)
            #expect(sale.status == .ok)

            let seats = try await client.send(.get, "/shows/gala/seats")
            #expect(seats.status == .ok)
            #expect(seats.json["capacity"] as? Int == 3)
            #expect(seats.json["taken"] as? Int == 1)
            #expect(seats.json["available"] as? Int == 2)
            let sales = try await client.send(.get, "/shows/gala/sales")
            #expect(sales.json["sold"] as? Int == 1 && sales.json["net"] as? Int == 1)

            let refund = try await client.send(.post, "/shows/gala/tickets/g1/refund", headers: headers)
            #expect(refund.status == .ok)
            let after = try await client.send(.get, "/shows/gala/sales")
            #expect(after.json["refunded"] as? Int == 1 && after.json["net"] as? Int == 0)
        }
    }

    @Test func aShowTheReadModelsDoNotKnowAnswers404() async throws {
        try await withServer { client in
            let reply = try await client.send(.get, "/shows/nope/seats")
            #expect(reply.status == .notFound)
            #expect(reply.json["error"] as? String == "unknownShow")
        }
    }
}
