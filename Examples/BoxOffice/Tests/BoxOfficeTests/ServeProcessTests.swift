import BackstagePostgres
import BackstageTesting
import BoxOffice
import Foundation
import GRDB
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The real `box-office serve` executable: it serves, and SIGTERM drains it and exits 0.
@Suite("box-office serve process")
struct ServeProcessTests {
    @Test func sigtermDrainsTheServiceGroupAndExitsZero() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-proc-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let databasePath = directory.appendingPathComponent("serve.sqlite").path
        try await serveThenSIGTERM(arguments: ["--database", databasePath], directory: directory)

        // The projections committed before exiting: the read model's row is in the file.
        let database = try DatabaseQueue(path: databasePath)
        let available = try await database.read { db in
            try Int.fetchOne(db, sql: "SELECT available FROM show_seats WHERE show_id = 'gala'")
        }
        #expect(available == 5)
    }

    @Test(.needsPostgres) func onPostgresSigtermDrainsAndExitsZero() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-proc-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await BoxOfficePostgres.withDatabase { database in
            let store = try #require(database.store as? PostgresEventStore)
            try await serveThenSIGTERM(
                arguments: ["--database", BoxOfficePostgres.url!, "--schema", store.schema.rawValue],
                directory: directory)
            // The read models live in the schema, where any process reads them.
            let seats = try await BoxOfficeReadModels(store: store).seats("gala")
            #expect(seats?.available == 5)
        }
    }

    /// Starts `box-office serve` with `arguments` on a free port, schedules a show with a strong
    /// command and reads it back from the read models, sends SIGTERM and expects exit status 0.
    func serveThenSIGTERM(arguments: [String], directory: URL) async throws {
        let server = try await ServeProcess(arguments, in: directory)
        defer { server.child.stop() }

        // A command, strongly consistent: the read models have it when the answer comes.
        #expect(try await server.post("/shows", #"{"id": "gala", "title": "Gala", "capacity": 5}"#) == 201)
        let (seats, seatsResponse) = try await URLSession.shared.data(
            from: URL(string: server.base + "/shows/gala/seats")!)
        #expect((seatsResponse as? HTTPURLResponse)?.statusCode == 200)
        #expect(String(decoding: seats, as: UTF8.self).contains(#""available":5"#))

        let sent = ContinuousClock.now
        let status = try await server.terminate()
        #expect(status == 0, "box-office serve exits 0 within 20 s of SIGTERM")
        #expect(server.child.process.terminationReason == .exit, "it exited, it was not killed by the signal")
        #expect(ContinuousClock.now - sent < .seconds(10))
        #expect(server.child.text.contains("listening on 127.0.0.1:"))
    }
}
