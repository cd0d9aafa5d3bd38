import Backstage
import BackstagePostgres
import BackstageTesting
import Foundation
import Testing

extension PostgresTests {
    /// The streaming reads, each check on a fresh schema.
    @Suite("Streaming reads on PostgreSQL")
    struct Reading {
        @Test(arguments: ReadingConformance.checks)
        func reading(_ check: ConformanceCheck) async throws {
            try await withFreshStore { store in try await check.run(on: store) }
        }
    }
}
