import Backstage
import BoxOffice
import Foundation
import Testing

/// The read models agree with the aggregates after a concurrent demo, on both stores.
@Suite("Read models")
struct ReadModelTests {
    @Test(arguments: ["memory", "sqlite"])
    func readModelsMatchTheAggregates(storeKind: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-rm-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let location: DatabaseLocation =
            storeKind == "memory" ? .memory : .sqlite(path: directory.appendingPathComponent("rm.sqlite").path)
        let database = try BoxOfficeDatabase.open(location)
        let app = BackstageApp(store: database.store, router: try .boxOffice())
        var demo = Demo()
        demo.commands = 1_500
        demo.tasks = 8
        let readModels = try BoxOfficeReadModels(store: database.store, failEvery: 7)
        let (_, report) = try await ReadModelReport.measure(readModels: readModels, app: app, sampleShow: "show-1") {
            try await demo.run(on: app)
        }
        for number in 1...15 {
            let show = try await app.load(Show.self, id: "show-\(number)").state
            let row = try #require(try await readModels.show("show-\(number)"))
            #expect(row.capacity == show.capacity)
            #expect(row.available == show.capacity - show.ticketsSold, "show-\(number)")
            #expect(row.net == show.ticketsSold)
            #expect(row.tickets.values.reduce(0, +) == show.tickets.count)
            #expect(row.tickets["sold"] ?? 0 == show.tickets.values.filter { $0 == .sold }.count)
        }
        #expect(report.shows == 15)
        #expect(report.receiptRetries > 0, "the flaky mail server failed some first attempts")
        #expect(report.receiptsSent == report.show.map { _ in readModels.receipts.sent } ?? -1)
        #expect(report.parked == 0)
        #expect(report.text.contains("projection lag"))
        try await database.close()
    }

    @Test func aStrongSaleIsVisibleInTheReadModelsAtOnce() async throws {
        let database = try BoxOfficeDatabase.open(.memory)
        let app = BackstageApp(store: database.store, router: try .boxOffice())
        let readModels = try BoxOfficeReadModels(
            store: database.store, options: ProjectionOptions(batchTimeout: .milliseconds(200)))
        let pipelines = try readModels.pipelines(app: app, receipts: false)
        let running = Task { try await pipelines.run() }
        try await app.dispatch(ScheduleShow(showID: "gala", title: "Gala", capacity: 3))
        try await app.dispatch(AddTicket(showID: "gala", ticketID: "gala-1"))
        try await app.dispatch(SellTicket(showID: "gala", buyer: "ada"), options: DispatchOptions(consistency: .strong))
        let row = try #require(try await readModels.show("gala"))
        #expect(row.available == 2 && row.sold == 1 && row.tickets == ["sold": 1])
        pipelines.stop()
        try await running.value
    }
}
