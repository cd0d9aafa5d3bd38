import Backstage
import BackstageCLI
import BackstagePostgres
import Foundation
import Testing

/// Runs the tool in this process and returns its status and output.
private func runTool(_ arguments: [String]) async -> (Int32, String, String) {
    let (output, captured) = CommandOutput.capturing()
    let status = await BackstageTool().run(arguments, output: output)
    return (status, captured.standardOutput, captured.standardError)
}

@Suite("backstage CLI (PostgreSQL)", .needsPostgres)
struct PostgresCLITests {
    @Test("streams, read, events, subscriptions, parked, stats and export against a PostgreSQL schema")
    func commands() async throws {
        let url = try PostgresTestEnvironment.requireURL()
        try await withFreshStore { store in
            for (stream, type) in [("show-1", "Scheduled"), ("show-2", "Scheduled"), ("show-1", "Sold")] {
                _ = try await store.append(
                    [EventData(type: type, data: Data(#"{"n":1}"#.utf8))], to: stream, expected: .any, commandID: nil)
            }
            let log = try await store.readAll(after: .start, limit: 10, filter: .all)
            try await store.pipelineDefaults.checkpoints.commit(
                "receipts", expected: nil, new: log[0].logPosition, token: 0)
            try await store.pipelineDefaults.parkedEvents.park(
                ParkedEvent(subscription: "receipts", event: log[1], error: "down", attempts: 2))
            let target = ["--store", url, "--schema", store.schema.rawValue]

            let (status, streams, err) = await runTool(["streams"] + target)
            #expect(status == 0, "\(err)")
            #expect(streams.contains("show-1") && streams.contains("show-2"))
            let (_, read, _) = await runTool(["read", "show-1", "--json"] + target)
            let events = try JSONSerialization.jsonObject(with: Data(read.utf8)) as? [[String: Any]]
            #expect(events?.map { $0["type"] as? String } == ["Scheduled", "Sold"])
            #expect(events?.last?["position"] as? String == log[2].logPosition.description)
            let (_, sold, _) = await runTool(
                ["events", "--type", "Sold", "--after", log[0].logPosition.description] + target)
            #expect(sold.contains("show-1 @2  Sold") && !sold.contains("Scheduled"))
            let (_, subscriptions, _) = await runTool(["subscriptions", "--json"] + target)
            let values = try JSONSerialization.jsonObject(with: Data(subscriptions.utf8)) as? [[String: Any]]
            #expect(values?.first?["lagEvents"] as? Int == 2 && values?.first?["parked"] as? Int == 1)
            let position = log[1].logPosition.description
            let (_, parked, _) = await runTool(["parked", "list"] + target)
            #expect(parked.contains(position) && parked.contains("down"))
            let (discarded, _, _) = await runTool(["parked", "discard", "receipts", position] + target)
            #expect(discarded == 0)
            let (_, stats, _) = await runTool(["stats"] + target)
            #expect(stats.hasPrefix("3 events in 2 streams"))
            let (_, export, _) = await runTool(["export", "--format", "csv", "--category", "show"] + target)
            #expect(export.split(separator: "\n").count == 4)
        }
    }

    @Test("a wrong password, an unreachable server and a schema without a store are one-line errors")
    func errors() async throws {
        let url = try PostgresTestEnvironment.requireURL()
        let settings = try PostgresConnectionSettings(url: url)
        let wrongPassword = url.replacingOccurrences(of: ":\(settings.password ?? "")@", with: ":wrong@")
        let cases: [([String], String)] = [
            (["streams", "--store", wrongPassword], "password authentication failed"),
            (["streams", "--store", "postgres://backstage@127.0.0.1:1/backstage"], "cannot connect to 127.0.0.1:1"),
            (["streams", "--store", url, "--schema", "no_store_here"], "holds no Backstage store"),
            (["streams", "--store", url, "--schema", "Bad-Name"], "invalid schema name"),
        ]
        for (arguments, message) in cases {
            let (status, _, err) = await runTool(arguments)
            #expect(status == 1)
            #expect(err.hasPrefix("backstage: error: ") && err.contains(message), "\(err)")
            #expect(err.split(separator: "\n").count == 1, "\(err)")
        }
    }
}
