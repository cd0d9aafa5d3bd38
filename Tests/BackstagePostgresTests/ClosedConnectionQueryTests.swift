import Backstage
import BackstagePostgres
import BackstageTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// What postgres-nio (1.33) does with a query on a connection that is already closed: the
/// diagnosis of shareKillPauseJoin's stuck runners (a query after the server ended the session).
@Suite("postgres-nio on a closed connection")
struct ClosedConnectionQueryTests {
    @Test("a query on a connection closed before it is sent never completes (postgres-nio 1.33.2, known issue)")
    func queryAfterClose() async throws {
        try await withFreshStore { store in
            let outcome = Locked("pending")
            try await store.client.withConnection { conn in
                try await conn.close()
                // Unstructured on purpose: if the query never returns, the test must still end.
                let query = Task {
                    do {
                        _ = try await conn.query("SELECT 1", logger: Logger(label: "closed"))
                        outcome.value.withLock { $0 = "succeeded" }
                    } catch {
                        outcome.value.withLock { $0 = "failed: \(error)" }
                    }
                }
                let deadline = ContinuousClock.now + .seconds(5)
                while outcome.value.withLock({ $0 }) == "pending", ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(50))
                }
                _ = query
            }
            let result = outcome.value.withLock { $0 }
            print("postgres-nio: query on a closed connection: \(result)")
            // postgres-nio 1.33.2 writes the query with `channel.write(..., promise: nil)` and awaits
            // the query's own promise, which a closed channel drops: it never completes. Our code
            // therefore checks `isClosed` before its queries (pooled calls, ROLLBACK, COMMIT). When
            // the driver is fixed this known issue stops occurring and the test reports it.
            withKnownIssue("postgres-nio: a query on a closed connection never completes") {
                #expect(result != "pending", "a query on a closed connection did not complete within 5 s")
            }
        }
    }
}
