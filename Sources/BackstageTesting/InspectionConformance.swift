import Backstage
import Foundation

/// The checks every store's `StoreInspector` (`EventStore.inspector`) passes: streams paged
/// and filtered by category, one stream, subscriptions with checkpoint, lag and parked count,
/// and statistics by type and day.
///
/// ```swift
/// @Test func inspection() async throws {
///     try await InspectionConformance.run(on: InMemoryEventStore())
/// }
/// ```
public enum InspectionConformance {
    /// Runs every check on `store`, which must be empty and have durable or in-memory pipeline
    /// defaults (`EventStore.pipelineDefaults`): the checks write a checkpoint and a parked event.
    /// - Throws: ``ConformanceFailure`` naming what the inspector answered wrongly.
    public static func run(on store: any EventStore) async throws {
        func expect(_ condition: Bool, _ message: @autoclosure () -> String, line: Int = #line) throws {
            if !condition {
                throw ConformanceFailure(
                    check: "inspection", message: message(), location: "InspectionConformance.swift:\(line)")
            }
        }
        func data(_ n: Int) -> Data { Data(#"{"n":\#(n)}"#.utf8) }
        // Streams chosen so that a prefix match on the category would be wrong: "showcase-1" is
        // not in category "show"; "show" (no dash) is.
        let writes: [(String, String)] = [
            ("show-1", "Scheduled"), ("show-2", "Scheduled"), ("show-1", "Sold"), ("showcase-1", "Opened"),
            ("show", "Listed"), ("show-1", "Sold"), ("ticket-9", "Sold"),
        ]
        for (i, (stream, type)) in writes.enumerated() {
            _ = try await store.append(
                [EventData(type: type, data: data(i))], to: stream, expected: .any, commandID: nil)
        }
        let inspector = store.inspector
        let log = try await store.readAll(after: .start, limit: 100, filter: .all)
        try expect(log.count == writes.count, "the log holds \(log.count) events, not \(writes.count)")

        // Streams: store order is byte order for these ASCII names.
        let all = try await inspector.streams(category: nil, after: nil, limit: 100)
        try expect(
            all.streams.map(\.stream) == ["show", "show-1", "show-2", "showcase-1", "ticket-9"],
            "streams: \(all.streams.map(\.stream))")
        try expect(all.next == nil, "a complete page has no next cursor, got \(all.next ?? "")")
        let show1 = all.streams.first { $0.stream == "show-1" }
        try expect(show1?.version == 3, "show-1 is at version \(show1?.version ?? -1), not 3")
        try expect(show1?.lastPosition == log[5].position, "show-1's last position is \(show1?.lastPosition ?? -1)")
        try expect(show1?.category == "show", "show-1's category is \(show1?.category ?? "")")
        try expect(
            show1.map { abs($0.lastWrittenAt.timeIntervalSince(log[5].recordedAt)) < 0.01 } == true,
            "show-1's last write time is not that of its last event")

        var paged: [String] = []
        var cursor: String?
        repeat {
            let page = try await inspector.streams(category: nil, after: cursor, limit: 2)
            try expect(page.streams.count <= 2, "a page of 2 holds \(page.streams.count) streams")
            paged += page.streams.map(\.stream)
            cursor = page.next
        } while cursor != nil && paged.count < 10
        try expect(paged == all.streams.map(\.stream), "paging by 2 gave \(paged)")

        let shows = try await inspector.streams(category: "show", after: nil, limit: 100)
        try expect(
            shows.streams.map(\.stream) == ["show", "show-1", "show-2"], "category show: \(shows.streams.map(\.stream))"
        )
        let none = try await inspector.streams(category: "sh", after: nil, limit: 100)
        try expect(none.streams.isEmpty, "category sh: \(none.streams.map(\.stream))")

        let one = try await inspector.stream("show-2")
        try expect(
            one?.version == 1 && one?.lastPosition == log[1].position, "stream show-2: \(String(describing: one))")
        let missing = try await inspector.stream("nobody-here")
        try expect(missing == nil, "a stream without events is nil, got \(String(describing: missing))")

        // Subscriptions: a checkpoint after the third event, one parked event.
        let defaults = store.pipelineDefaults
        try await defaults.checkpoints.commit("receipts", expected: nil, new: log[2].logPosition, token: 0)
        try await defaults.parkedEvents.park(
            ParkedEvent(subscription: "receipts", event: log[1], error: "boom", attempts: 3))
        let subscriptions = try await inspector.subscriptions(filters: ["receipts": EventFilter(types: ["Sold"])])
        try expect(
            subscriptions.map(\.subscription) == ["receipts"], "subscriptions: \(subscriptions.map(\.subscription))")
        let receipts = subscriptions[0]
        try expect(receipts.checkpoint == log[2].logPosition, "checkpoint \(String(describing: receipts.checkpoint))")
        try expect(receipts.lagEvents == 2 && receipts.filtered, "filtered lag is \(receipts.lagEvents), not 2")
        try expect(receipts.lagSeconds >= 0 && receipts.lagSeconds < 600, "lag seconds \(receipts.lagSeconds)")
        try expect(receipts.parked == 1, "parked count \(receipts.parked)")
        try expect(receipts.activity != .running, "a subscription nobody runs is \(receipts.activity)")
        let unfiltered = try await inspector.subscriptions()
        try expect(unfiltered.first?.lagEvents == 4, "unfiltered lag is \(unfiltered.first?.lagEvents ?? -1), not 4")
        let parked = try await inspector.parkedEvents(subscription: nil, limit: 10)
        try expect(
            parked.map(\.event.id) == [log[1].id] && parked.first?.error == "boom",
            "parked events: \(parked.map(\.event.id))")

        // Statistics.
        let stats = try await inspector.statistics(category: nil)
        try expect(
            stats.events == 7 && stats.streams == 5, "statistics: \(stats.events) events, \(stats.streams) streams")
        try expect(
            stats.byType.map(\.type) == ["Sold", "Scheduled", "Listed", "Opened"]
                && stats.byType.map(\.count) == [3, 2, 1, 1],
            "by type: \(stats.byType.map { "\($0.type)=\($0.count)" })")
        try expect(stats.byDay.map(\.count).reduce(0, +) == 7, "by day: \(stats.byDay)")
        try expect(
            stats.byDay.allSatisfy { $0.day.count == 10 && $0.day.hasPrefix("20") }, "day format: \(stats.byDay)")
        let showStats = try await inspector.statistics(category: "show")
        try expect(
            showStats.events == 5 && showStats.streams == 3,
            "category show: \(showStats.events) events, \(showStats.streams) streams")
    }
}
