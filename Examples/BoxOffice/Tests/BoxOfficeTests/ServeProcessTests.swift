import BackstagePostgres
import BoxOffice
import BackstageTesting
import Foundation
import GRDB
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The real `box-office serve` executable: it serves, and SIGTERM drains it and exits 0.
@Suite("box-office serve process")
struct ServeProcessTests {
    /// The `box-office` executable built next to this test binary.
    static func executable() throws -> URL { try testExecutable(named: "box-office") }

    struct Timeout: Error, CustomStringConvertible {
        var description: String
    }

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
        let output = directory.appendingPathComponent("stdout.txt")
        #expect(FileManager.default.createFile(atPath: output.path, contents: nil))

        let process = Process()
        process.executableURL = try Self.executable()
        process.arguments = ["serve", "--port", "0"] + arguments
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = FileHandle.nullDevice
        let exited = AsyncStream<Int32>.makeStream()
        process.terminationHandler = { process in
            exited.continuation.yield(process.terminationStatus)
            exited.continuation.finish()
        }
        try process.run()
        defer { if process.isRunning { process.interrupt() } }

        // Wait for the port it prints (nothing to await across processes: poll with a deadline).
        let deadline = ContinuousClock.now + .seconds(60)
        var port: Int?
        while port == nil {
            let text = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("listening on ") }),
                let value = line.split(separator: ":").last.flatMap({ Int($0) })
            {
                port = value
            } else {
                guard process.isRunning else { throw Timeout(description: "box-office serve exited early: \(text)") }
                guard ContinuousClock.now < deadline else { throw Timeout(description: "no port printed: \(text)") }
                try await Task.sleep(for: .milliseconds(50))
            }
        }

        // A command, strongly consistent: the read models have it when the answer comes.
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port!)/shows")!)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("strong", forHTTPHeaderField: "Consistency")
        request.httpBody = Data(#"{"id": "gala", "title": "Gala", "capacity": 5}"#.utf8)
        let (_, response) = try await URLSession.shared.data(for: request)
        #expect((response as? HTTPURLResponse)?.statusCode == 201)
        let (seats, seatsResponse) = try await URLSession.shared.data(
            from: URL(string: "http://127.0.0.1:\(port!)/shows/gala/seats")!)
        #expect((seatsResponse as? HTTPURLResponse)?.statusCode == 200)
        #expect(String(decoding: seats, as: UTF8.self).contains(#""available":5"#))

        let sent = ContinuousClock.now
        process.terminate()  // SIGTERM
        let status = try await withThrowingTaskGroup(of: Int32?.self) { group in
            group.addTask {
                for await status in exited.stream { return status }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: .seconds(20))
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard let status else {
            process.interrupt()
            throw Timeout(description: "box-office serve did not exit within 20 s of SIGTERM")
        }
        #expect(status == 0)
        #expect(process.terminationReason == .exit, "it exited, it was not killed by the signal")
        #expect(ContinuousClock.now - sent < .seconds(10))
        let log = try String(contentsOf: output, encoding: .utf8)
        #expect(log.contains("listening on 127.0.0.1:"))
    }
}
