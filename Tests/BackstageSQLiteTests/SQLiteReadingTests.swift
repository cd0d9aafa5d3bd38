import Backstage
import BackstageSQLite
import BackstageTesting
import Foundation
import Testing

@Suite("Streaming reads on SQLite")
struct SQLiteReadingTests {
    @Test(arguments: ReadingConformance.checks)
    func reading(_ check: ConformanceCheck) async throws {
        let directory = try TemporaryDatabase()
        let folder = directory.directory.path
        try await check.run { try SQLiteEventStore(path: "\(folder)/\(UUID()).sqlite") }
    }
}
