import Backstage
import BackstageSQLite
import BackstageTesting
import Foundation
import Testing

@Suite("SQLiteEventStore conformance")
struct SQLiteConformanceTests {
    @Test(arguments: StoreConformance.checks)
    func conformance(_ check: ConformanceCheck) async throws {
        let directory = try TemporaryDatabase()
        let folder = directory.directory.path
        try await check.run { try SQLiteEventStore(path: "\(folder)/\(UUID()).sqlite") }
    }

    @Test("small limits are read from the store")
    func smallLimits() async throws {
        let directory = try TemporaryDatabase()
        let folder = directory.directory.path
        var configuration = SQLiteEventStore.Configuration()
        configuration.limits = StoreLimits(
            maxPayloadBytes: 64, maxEventsPerAppend: 5, maxStreamIDBytes: 24, maxPageSize: 7, maxTypeNameBytes: 20)
        let limited = configuration
        for check in StoreConformance.checks where check.name.hasPrefix("rejects") || check.name.hasPrefix("accepts") {
            try await check.run { try SQLiteEventStore(path: "\(folder)/\(UUID()).sqlite", configuration: limited) }
        }
    }
}
