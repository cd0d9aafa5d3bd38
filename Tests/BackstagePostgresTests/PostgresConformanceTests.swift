import Backstage
import BackstagePostgres
import BackstageTesting
import Foundation
import Testing

extension PostgresTests {
    /// The shared event store contract, each check on a fresh schema.
    @Suite("PostgresEventStore conformance")
    struct Conformance {
        @Test(arguments: StoreConformance.checks)
        func conformance(_ check: ConformanceCheck) async throws {
            try await withFreshStore { store in try await check.run(on: store) }
        }

        @Test("small limits are read from the store")
        func smallLimits() async throws {
            let limits = StoreLimits(
                maxPayloadBytes: 64, maxEventsPerAppend: 5, maxStreamIDBytes: 24, maxPageSize: 7, maxTypeNameBytes: 20)
            for check in StoreConformance.checks
            where check.name.hasPrefix("rejects") || check.name.hasPrefix("accepts") {
                try await withFreshStore(configure: { $0.limits = limits }) { store in try await check.run(on: store) }
            }
        }
    }
}
