import Backstage
import BackstageTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

/// What postgres-nio (1.33) does with a query on a connection that is already closed: the
/// diagnosis of shareKillPauseJoin's stuck runners (a query after the server ended the session).
@Suite("postgres-nio on a closed connection")
struct ClosedConnectionQueryTests {
    @Test("queryUnlessClosed fails at once on a closed connection, and still runs a query on an open one")
    func queryUnlessClosed() async throws {
        try await withFreshStore { store in
            let logger = Logger(label: "closed")
            try await store.client.withConnection { conn in
                let open = try await conn.queryUnlessClosed("SELECT 7", logger: logger)
                #expect(try open.rows.first?.makeRandomAccess()[0].decode(Int.self) == 7)
                try await conn.close()
                // Without the check on the event loop this waits for ever (the test above).
                await #expect(
                    throws: PostgresStoreError.database(sqlState: "08006", message: "the connection is closed")
                ) {
                    _ = try await conn.queryUnlessClosed("SELECT 1", logger: logger)
                }
            }
        }
    }

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
