import Backstage
import BackstageSQLite
import BackstageTesting
import Foundation
import Synchronization
import Testing

/// The build folder holding this test binary and the worker executables.
func productsDirectory() throws -> URL { try testProductsDirectory() }

/// Runs `executable` and collects its stdout lines; `stop` kills it with SIGKILL once `enough` lines arrived.
func runUntilKilled(_ executable: URL, arguments: [String], lines enough: Int) async throws -> [String] {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let handle = pipe.fileHandleForReading
    let lines = await onOwnThread { () -> [String] in
        var buffer = Data()
        var lines: [String] = []
        var killed = false
        while true {
            let chunk = handle.availableData  // blocks until data or end of file
            if chunk.isEmpty { break }
            buffer.append(chunk)
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                lines.append(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...newline)
            }
            if !killed, lines.count >= enough {
                kill(process.processIdentifier, SIGKILL)
                killed = true
            }
        }
        return lines
    }
    await process.exited()
    #expect(process.terminationReason == .uncaughtSignal, "the worker was meant to be killed, not to exit")
    return lines
}

@Suite("SQLite crash safety")
struct CrashTests {
    @Test("a writer killed with SIGKILL mid-batch loses no acknowledged append and leaves no partial one")
    func killedWriter() async throws {
        let file = try TemporaryDatabase()
        let worker = try productsDirectory().appendingPathComponent("backstage-append-worker")
        var acknowledged: [UUID: (stream: String, first: Int64, last: Int64, count: Int)] = [:]
        for round in 0..<5 {
            let lines = try await runUntilKilled(
                worker, arguments: [file.path], lines: Int.random(in: 200...2_000))
            for line in lines {
                let f = line.split(separator: " ")
                guard f.count == 6, f[0] == "ok", let id = UUID(uuidString: String(f[1])) else {
                    Issue.record("round \(round): unexpected worker output: \(line)")
                    continue
                }
                acknowledged[id] = (String(f[2]), Int64(f[3])!, Int64(f[4])!, Int(f[5])!)
            }
        }
        let store = try SQLiteEventStore(path: file.path)
        // Every acknowledged append is stored where it was reported.
        for (id, ack) in acknowledged {
            let stored = try await store.appendResult(forCommand: id)
            #expect(stored?.firstPosition == ack.first && stored?.lastPosition == ack.last, "append \(id) lost")
        }
        // Every stored append is whole: its events are contiguous and as many as it carried.
        var all: [RecordedEvent] = []
        while true {
            let page = try await store.readAll(after: all.last?.logPosition ?? .start, limit: 5_000, filter: .all)
            all += page
            if page.count < 5_000 { break }
        }
        #expect(all.count >= acknowledged.values.reduce(0) { $0 + $1.count })
        #expect(all.map(\.position) == Array(1...Int64(all.count)), "positions have gaps or repeats")
        let byCommand = Dictionary(grouping: all) { $0.metadata.commandID! }
        for (id, events) in byCommand {
            struct Body: Decodable { var of: Int }
            let of = try JSONDecoder().decode(Body.self, from: events[0].data).of
            #expect(events.count == of, "append \(id) is partial: \(events.count) of \(of) events")
            #expect(Set(events.map(\.stream)).count == 1)
        }
        // Stream versions are contiguous in every stream.
        for (stream, events) in Dictionary(grouping: all, by: \.stream) {
            #expect(events.map(\.streamVersion) == Array(1...Int64(events.count)), "stream \(stream) has gaps")
        }
    }
}
