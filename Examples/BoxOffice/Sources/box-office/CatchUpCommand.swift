import ArgumentParser
import Backstage
import BackstageSQLite
import BoxOffice
import Foundation
import GRDB
import Logging

/// `box-office catch-up`: projects every stored event from position zero into a fresh read-model
/// database and prints the catch-up rate and the peak memory of the process.
struct CatchUpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catch-up",
        abstract: "Measure how fast the box-office projections catch up over the stored events.",
        discussion: "Fill the database first, e.g. `box-office demo --fresh --commands 100000`. Build with -c release.")

    @OptionGroup var options: DatabaseOptions

    @Option(help: "Events per projection transaction.")
    var batchSize = 500

    func run() async throws {
        guard case .sqlite(let path) = try options.location() else {
            throw ValidationError("catch-up needs an SQLite database with events")
        }
        let store = try SQLiteEventStore(path: path)
        let head = try await store.headPosition()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-catch-up-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let readModels = try DatabasePool(path: directory.appendingPathComponent("read-models.sqlite").path)
        var projectionOptions = ProjectionOptions()
        projectionOptions.batchSize = batchSize
        let projections: [any Projection] = [
            try SQLiteProjection(TicketsReadModel(), database: readModels, options: projectionOptions),
            try SQLiteProjection(SeatsReadModel(), database: readModels, options: projectionOptions),
            try SQLiteProjection(SalesReadModel(), database: readModels, options: projectionOptions),
        ]
        var logger = Logger(label: "catch-up")
        logger.logLevel = .warning
        let pipelines = try PipelineService(store: store, projections: projections, logger: logger)
        print(
            "Catching up \(head.position) stored events with 3 projections (batch size \(batchSize)), RSS \(rss().now / 1024) MiB"
        )
        let start = ContinuousClock.now
        let elapsed = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await pipelines.run() }
            defer { pipelines.stop() }
            try await pipelines.waitUntilProcessed(head, timeout: .seconds(3_600))
            return ContinuousClock.now - start
        }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rows = try await readModels.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM tickets") ?? 0 }
        let memory = rss()
        print(
            String(
                format: "caught up in %.2f s: %.0f events/s (every stored event read by each projection that wants it)",
                seconds, Double(head.position) / seconds))
        print("tickets rows: \(rows); peak RSS \(memory.peak / 1024) MiB, RSS now \(memory.now / 1024) MiB")
        try await store.close()
        try readModels.close()
    }

    /// Current and peak resident memory of this process, in KiB (Linux /proc).
    private func rss() -> (now: Int, peak: Int) {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return (0, 0) }
        func value(_ key: String) -> Int {
            status.split(separator: "\n").first { $0.hasPrefix(key) }
                .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
        }
        return (value("VmRSS:"), value("VmHWM:"))
    }
}
