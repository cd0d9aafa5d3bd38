import BackstagePostgres
import BoxOffice
import Foundation
import Testing

/// `box-office serve --receipt-partitions N` on PostgreSQL: several processes share the receipt sender.
@Suite("box-office serve: receipts shared by processes")
struct ReceiptPartitionsTests {
    @Test(.needsPostgres, .timeLimit(.minutes(3)))
    func twoServeProcessesShareTheReceiptPartitions() async throws {
        try await BoxOfficePostgres.withDatabase { database in
            let store = try #require(database.store as? PostgresEventStore)
            let processes = try (0..<2).map { _ in
                let process = Process()
                process.executableURL = try ServeProcess.executable()
                process.arguments = [
                    "serve", "--port", "0", "--database", BoxOfficePostgres.url!, "--schema", store.schema.rawValue,
                    "--receipt-partitions", "4",
                ]
                process.standardOutput = FileHandle.nullDevice
                process.standardError = FileHandle.nullDevice
                try process.run()
                return process
            }
            defer { for p in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
            // Both processes own receipt partitions: two each once they have seen each other.
            let deadline = ContinuousClock.now + .seconds(90)
            var shares: [String: Int] = [:]
            while ContinuousClock.now < deadline {
                let rows = try await store.client.query(
                    """
                    SELECT owner FROM \(unescaped: store.schema.rawValue).leases
                    WHERE subscription LIKE 'receipts#%/4' AND expires_at > now()
                    """)
                shares = [:]
                for try await owner in rows.decode(String.self) {
                    shares[String(owner.prefix { $0 != "/" }), default: 0] += 1
                }
                if shares.count == 2, shares.values.allSatisfy({ $0 == 2 }) { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(
                shares.count == 2 && shares.values.allSatisfy { $0 == 2 }, "receipt partitions per process: \(shares)")
            for p in processes { p.terminate() }
        }
    }
}
