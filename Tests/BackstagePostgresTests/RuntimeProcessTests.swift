import Backstage
import BackstageTestSupport
import Foundation
import Synchronization
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    @Suite("Aggregate runtime across PostgreSQL processes")
    struct RuntimeProcesses {
        @Test("a cached aggregate decides on what another process appended before the command started")
        func staleCacheAcrossProcesses() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                let app = try walletApp(store)
                try await app.dispatch(Credit(id: "w", amount: 10, reference: "r1"))  // cached: balance 10
                let worker = try WorkerProcess(arguments: [
                    "append", url, store.schema.rawValue, "wallet-w", "Credited",
                    #"{"amount":100,"note":"from another process","reference":"r2"}"#,
                ])
                defer { worker.kill() }
                #expect(await worker.allLines() == ["appended 2"])
                let result = try await app.dispatch(Debit(id: "w", amount: 50))
                #expect(result.state.balance == 60)
                #expect(result.version == 3)
                #expect(result.retries == 0)
            }
        }

        @Test("8 processes racing 64 commands for 10 seats end in domain answers only", .timeLimit(.minutes(3)))
        func hotAggregate() async throws {
            let url = try PostgresTestEnvironment.requireURL()
            try await withFreshStore { store in
                // Every process starts selling at the same instant, a moment after all were launched.
                let start = "\(Int64((Date().timeIntervalSince1970 + 3) * 1000))"
                let sellers = try (0..<8).map { _ in
                    try WorkerProcess(arguments: ["race", url, store.schema.rawValue, "1", "10", "8", start])
                }
                defer { for s in sellers { s.kill() } }
                var totals: [String: Int] = [:]
                var lines: [String] = []
                for s in sellers {
                    let line = try #require(await s.waitForLine { $0.hasPrefix("result ") })
                    lines.append(line)
                    for part in line.split(separator: " ").dropFirst() {
                        let kv = part.split(separator: "=")
                        if kv.count == 2 { totals[String(kv[0]), default: 0] += Int(kv[1]) ?? 0 }
                    }
                }
                #expect(totals["sold"] == 10, "\(lines)")
                #expect(totals["soldOut"] == 54, "\(lines)")
                #expect(totals["conflicts"] == 0, "\(lines)")
                #expect(totals["errors"] == 0, "\(lines)")
                let sold = try await store.readStream("show-s0", from: 1, direction: .forward, limit: 100)
                #expect(sold.map(\.streamVersion) == Array(1...10))
            }
        }

        @Test("a retried command reaching the store through several app instances is never a conflict")
        func honestRetries() async throws {
            try await withFreshStore { store in
                try await withPeers(of: store, count: 4) { others in
                    let peers = [store] + others
                    let apps = try peers.map { try walletApp($0) }
                    for round in 0..<3 {
                        let id = UUIDv7.next()
                        let command = Credit(id: "retried\(round)", amount: 42, reference: "order-\(round)")
                        let outcomes = await dispatchRetried(command, id: id, over: apps)
                        let failures = outcomes.compactMap { if case .failure(let e) = $0 { "\(e)" } else { nil } }
                        #expect(failures.isEmpty, "\(failures)")
                        let results = outcomes.compactMap { try? $0.get() }
                        #expect(results.filter { !$0.isDuplicate }.count == 1)
                        #expect(results.allSatisfy { $0.version == 1 && $0.state.balance == 42 })
                    }
                }
            }
        }
    }
}
