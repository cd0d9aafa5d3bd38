import Backstage
import BackstageCLI
import BackstageSQLite
import Foundation
import Synchronization
import Testing

/// A folder removed at the end of the test, holding a prepared SQLite store.
final class PreparedStore: Sendable {
    let directory: URL
    var path: String { directory.appendingPathComponent("events.sqlite").path }
    /// The log as appended: show-1 (Scheduled, Sold, Sold), show-2 (Scheduled), ticket-9 (Sold).
    let log: [RecordedEvent]

    init() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("backstage-cli-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let store = try SQLiteEventStore(path: directory.appendingPathComponent("events.sqlite").path)
        let writes: [(String, String, String)] = [
            ("show-1", "Scheduled", #"{"title":"Hamlet"}"#), ("show-2", "Scheduled", #"{"title":"Lear"}"#),
            ("show-1", "Sold", #"{"seat":"A1"}"#), ("show-1", "Sold", #"{"seat":"A2"}"#),
            ("ticket-9", "Sold", #"{"seat":"B, \"7\""}"#),
        ]
        let correlation = UUID()
        for (stream, type, json) in writes {
            let command = UUID()
            _ = try await store.append(
                [
                    EventData(
                        type: type, data: Data(json.utf8),
                        metadata: EventMetadata(
                            commandID: command, correlationID: correlation, fields: ["user": "alice"]))
                ], to: stream, expected: .any, commandID: command)
        }
        log = try await store.readAll(after: .start, limit: 100, filter: .all)
        // A handler 'receipts' at position 2 with the third event parked.
        try await store.pipelineDefaults.checkpoints.commit(
            "receipts", expected: nil, new: log[1].logPosition, token: 0)
        try await store.pipelineDefaults.parkedEvents.park(
            ParkedEvent(subscription: "receipts", event: log[2], error: "mail server down", attempts: 4))
        try await store.close()
    }

    deinit { try? FileManager.default.removeItem(at: directory) }
}

/// Runs the tool in this process and returns its status and output.
func runTool(_ arguments: [String], tool: BackstageTool = BackstageTool()) async -> (Int32, String, String) {
    let (output, captured) = CommandOutput.capturing()
    let status = await tool.run(arguments, output: output)
    return (status, captured.standardOutput, captured.standardError)
}

/// The application side of the tests: a handler that records what it handles (for `parked
/// replay`) and a projection counting sales (for `rebuild`).
final class Registered: Sendable {
    struct Receipts: EventHandler {
        let name = "receipts"
        let registered: Registered
        var filter: EventFilter { EventFilter(types: ["Sold"]) }
        func handle(_ event: RecordedEvent) async throws {
            registered.handled.withLock { $0.append(event.position) }
        }
    }

    let handled = Mutex<[Int64]>([])
    let projection = InMemoryProjection<Int>(name: "sales", filter: EventFilter(types: ["Sold"]), initial: 0) {
        state, _ in state += 1
    }

    var tool: BackstageTool {
        BackstageTool(commandName: "box-office admin") { [self] store in
            try PipelineService(store: store, handlers: [Receipts(registered: self)], projections: [projection])
        }
    }
}

@Suite("backstage CLI (SQLite)")
struct CLITests {
    @Test("streams lists streams with version, last position and last write; --category and paging")
    func streams() async throws {
        let prepared = try await PreparedStore()
        let (status, out, err) = await runTool(["streams", "--store", "sqlite:\(prepared.path)"])
        #expect(status == 0, "\(err)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("STREAM") == true)
        #expect(lines.count == 4)
        #expect(lines[1].hasPrefix("show-1") && lines[1].contains("  3  ") && lines[1].contains("  4  "))
        #expect(lines[3].hasPrefix("ticket-9"))

        let (_, shows, _) = await runTool(["streams", "-s", prepared.path, "--category", "show", "--limit", "1"])
        #expect(shows.contains("show-1") && !shows.contains("show-2") && shows.contains("more: --after 'show-1'"))

        let (_, json, _) = await runTool(["streams", "-s", prepared.path, "--json"])
        let value = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let streams = value?["streams"] as? [[String: Any]]
        #expect(streams?.map { $0["stream"] as? String } == ["show-1", "show-2", "ticket-9"])
        #expect(streams?.first?["version"] as? Int == 3)
    }

    @Test("read prints a stream's events with metadata, forward and backward, paged")
    func read() async throws {
        let prepared = try await PreparedStore()
        let (status, out, _) = await runTool(["read", "show-1", "-s", prepared.path, "--limit", "2"])
        #expect(status == 0)
        #expect(out.contains("stream show-1: version 3"))
        #expect(out.contains("show-1 @1  Scheduled") && out.contains("show-1 @2  Sold"))
        #expect(!out.contains("show-1 @3"))
        #expect(out.contains("user: alice") && out.contains("correlation ") && out.contains("command "))
        #expect(out.contains(#""title" : "Hamlet""#))
        #expect(out.contains("more: --from 3"))

        let (_, backward, _) = await runTool(["read", "show-1", "-s", prepared.path, "--backward", "--limit", "1"])
        #expect(backward.contains("show-1 @3  Sold") && backward.contains("more: --from 2 --backward"))

        let (_, json, _) = await runTool(["read", "show-1", "-s", prepared.path, "--json"])
        let events = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]]
        #expect(events?.count == 3)
        #expect((events?[2]["data"] as? [String: Any])?["seat"] as? String == "A2")
        #expect((events?[0]["metadata"] as? [String: Any])?["fields"] as? [String: String] == ["user": "alice"])
    }

    @Test("events reads the log after a position, by type or category")
    func events() async throws {
        let prepared = try await PreparedStore()
        let (status, out, _) = await runTool(["events", "-s", prepared.path, "--after", "2", "--type", "Sold"])
        #expect(status == 0)
        #expect(out.contains("show-1 @2  Sold") && out.contains("show-1 @3  Sold") && out.contains("ticket-9 @1  Sold"))
        #expect(!out.contains("Scheduled"))
        let (_, tickets, _) = await runTool(["events", "-s", prepared.path, "--category", "ticket", "--json"])
        let events = try JSONSerialization.jsonObject(with: Data(tickets.utf8)) as? [[String: Any]]
        #expect(events?.map { $0["stream"] as? String } == ["ticket-9"])
        #expect(events?.first?["position"] as? String == "5")
        let (_, paged, _) = await runTool(["events", "-s", prepared.path, "--limit", "2"])
        #expect(paged.contains("more: --after 2"))
    }

    @Test("tail prints new events, from the head by default, and stops after --count")
    func tail() async throws {
        let prepared = try await PreparedStore()
        let (status, out, _) = await runTool(["tail", "-s", prepared.path, "--from-start", "--count", "5"])
        #expect(status == 0)
        let lines = out.split(separator: "\n")
        #expect(lines.count == 5)
        #expect(lines[4].hasPrefix("5  ") && lines[4].contains("ticket-9@1  Sold"))

        // From the head: waits for an event appended after it started. It reads the head when it
        // has opened the store, at a moment the test cannot see: append until it has printed one.
        let path = prepared.path
        let store = try SQLiteEventStore(path: path)
        let (tailStatus, tailOut, _) = try await withThrowingTaskGroup(of: (Int32, String, String)?.self) { group in
            group.addTask { await runTool(["tail", "-s", path, "--count", "1", "--json", "--interval", "20"]) }
            group.addTask {
                while !Task.isCancelled {
                    _ = try await store.append(
                        [EventData(type: "Refunded", data: Data("{}".utf8))], to: "show-9", expected: .any,
                        commandID: nil)
                    try await Task.sleep(for: .milliseconds(50))
                }
                return nil
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            throw CancellationError()
        }
        try await store.close()
        #expect(tailStatus == 0)
        let event = try JSONSerialization.jsonObject(with: Data(tailOut.utf8)) as? [String: Any]
        #expect(event?["type"] as? String == "Refunded")
    }

    @Test("subscriptions shows checkpoint, lag (filtered when the application registered the handler) and parked")
    func subscriptions() async throws {
        let prepared = try await PreparedStore()
        let (status, out, _) = await runTool(["subscriptions", "-s", prepared.path])
        #expect(status == 0)
        let row = out.split(separator: "\n").first { $0.hasPrefix("receipts") }.map(String.init) ?? ""
        #expect(row.contains("stopped") && row.contains("  2  ") && row.contains("3*"), "\(out)")
        let registered = Registered()
        let (_, json, _) = await runTool(["subscriptions", "-s", prepared.path, "--json"], tool: registered.tool)
        let values = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]]
        let receipts = values?.first { $0["subscription"] as? String == "receipts" }
        #expect(receipts?["lagEvents"] as? Int == 3)
        #expect(receipts?["filtered"] as? Bool == true)
        #expect(receipts?["parked"] as? Int == 1)
        #expect(receipts?["checkpoint"] as? String == "2")
        #expect(receipts?["activity"] as? String == "stopped")
    }

    @Test("parked lists, discards, and replays only with the application's handlers")
    func parked() async throws {
        let prepared = try await PreparedStore()
        let (status, out, _) = await runTool(["parked", "-s", prepared.path])
        #expect(status == 0)
        #expect(out.contains("receipts") && out.contains("show-1@2") && out.contains("mail server down"))

        let (refused, _, why) = await runTool(["parked", "replay", "receipts", "3", "-s", prepared.path])
        #expect(refused == 1)
        #expect(why.contains("application's build") && why.split(separator: "\n").count == 1)

        let registered = Registered()
        let (replayed, replayOut, replayErr) = await runTool(
            ["parked", "replay", "receipts", "3", "-s", prepared.path], tool: registered.tool)
        #expect(replayed == 0, "\(replayErr)")
        #expect(replayOut.contains("replayed the parked event at 3 for receipts"))
        #expect(registered.handled.withLock { $0 } == [3])
        let (_, empty, _) = await runTool(["parked", "list", "-s", prepared.path])
        #expect(empty.contains("no parked events"))

        let (missing, _, missingErr) = await runTool(["parked", "discard", "receipts", "3", "-s", prepared.path])
        #expect(missing == 1 && missingErr.contains("receipts"))
    }

    @Test("parked discard removes the event without the application's handlers")
    func discard() async throws {
        let prepared = try await PreparedStore()
        let (status, out, err) = await runTool(["parked", "discard", "receipts", "3", "-s", prepared.path])
        #expect(status == 0, "\(err)")
        #expect(out.contains("discarded"))
        let (_, json, _) = await runTool(["parked", "list", "-s", prepared.path, "--json"])
        #expect(json.trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
    }

    @Test("rebuild runs the application's projection into a new version; the plain tool says it cannot")
    func rebuild() async throws {
        let prepared = try await PreparedStore()
        let (refused, _, why) = await runTool(["rebuild", "sales", "-s", prepared.path])
        #expect(refused == 1 && why.contains("application's build"))
        let registered = Registered()
        let (status, out, err) = await runTool(["rebuild", "sales", "-s", prepared.path], tool: registered.tool)
        #expect(status == 0, "\(err)")
        #expect(out.contains("projection sales rebuilt: version 2"))
        #expect(registered.projection.state == 3)
        let (unknown, _, unknownErr) = await runTool(["rebuild", "nope", "-s", prepared.path], tool: registered.tool)
        #expect(unknown == 1 && unknownErr.contains("no projection named 'nope' (registered: sales)"))
    }

    @Test("stats counts events by type and by day")
    func stats() async throws {
        let prepared = try await PreparedStore()
        let (status, out, _) = await runTool(["stats", "-s", prepared.path])
        #expect(status == 0)
        #expect(out.hasPrefix("5 events in 3 streams"))
        let sold = out.split(separator: "\n").first { $0.hasPrefix("Sold") } ?? ""
        #expect(sold.contains("  3  "))
        let (_, json, _) = await runTool(["stats", "-s", prepared.path, "--category", "show", "--json"])
        let value = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        #expect(value?["events"] as? Int == 4 && value?["streams"] as? Int == 2)
        let days = value?["byDay"] as? [[String: Any]]
        #expect(days?.compactMap { $0["count"] as? Int }.reduce(0, +) == 4)
    }

    @Test("export writes JSON Lines or CSV, of the log, a category or a stream")
    func export() async throws {
        let prepared = try await PreparedStore()
        let (status, jsonl, _) = await runTool(["export", "-s", prepared.path])
        #expect(status == 0)
        let lines = jsonl.split(separator: "\n")
        #expect(lines.count == 5)
        let last = try JSONSerialization.jsonObject(with: Data(lines[4].utf8)) as? [String: Any]
        #expect((last?["data"] as? [String: Any])?["seat"] as? String == #"B, "7""#)

        let file = prepared.directory.appendingPathComponent("tickets.csv").path
        let (csvStatus, _, csvErr) = await runTool([
            "export", "-s", prepared.path, "--category", "ticket", "--format", "csv", "--output", file,
        ])
        #expect(csvStatus == 0)
        #expect(csvErr.contains("exported 1 events to"))
        let csv = try String(contentsOfFile: file, encoding: .utf8)
        let rows = csv.split(separator: "\n")
        #expect(rows.count == 2)
        #expect(rows[0].hasPrefix("position,stream,version,id,type"))
        #expect(rows[1].hasPrefix("5,ticket-9,1,") && rows[1].contains(#""{""seat"":""B, \""7\""""}""#))

        let (_, stream, _) = await runTool(["export", "-s", prepared.path, "--stream", "show-2"])
        #expect(stream.split(separator: "\n").count == 1 && stream.contains(#""stream":"show-2""#))
    }

    @Test("errors are one line on standard error with a non-zero status, and nothing is created")
    func errors() async throws {
        let prepared = try await PreparedStore()
        let missing = prepared.directory.appendingPathComponent("missing.sqlite").path
        let cases: [([String], String)] = [
            (["streams", "-s", missing], "no such file"),
            (["streams", "-s", "mysql://localhost/db"], "unsupported store"),
            (["streams", "-s", "postgres://"], "invalid PostgreSQL URL"),
            (["read", "nobody-1", "-s", prepared.path], "stream 'nobody-1' has no events"),
            (["events", "-s", prepared.path, "--after", "x:y"], "is not a log position"),
        ]
        for (arguments, message) in cases {
            let (status, out, err) = await runTool(arguments)
            #expect(status == 1, "\(arguments)")
            #expect(out.isEmpty)
            #expect(err.hasPrefix("backstage: error: ") && err.contains(message), "\(arguments): \(err)")
            #expect(err.split(separator: "\n").count == 1, "\(err)")
        }
        #expect(!FileManager.default.fileExists(atPath: missing))
        let (usage, _, usageErr) = await runTool(["streams", "--nonsense"])
        #expect(usage == 64 && usageErr.contains("--nonsense"))
        for help in [["--help"], ["parked", "--help"], ["help", "export"]] {
            let (status, out, err) = await runTool(help)
            #expect(status == 0 && out.contains("USAGE") && err.isEmpty, "\(help): \(out) \(err)")
        }
        let (_, embedded, _) = await runTool(["--help"], tool: BackstageTool(commandName: "box-office admin"))
        #expect(embedded.contains("USAGE: box-office admin <subcommand>"))
    }
}
