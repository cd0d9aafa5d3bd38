import Backstage
import BackstageSQLite
import BackstageTestSupport
import BackstageTesting
import Foundation
import Synchronization
import Testing

/// Runs the SQLite worker to its end and returns its stdout lines.
func runAppendWorker(_ arguments: [String]) async throws -> [String] {
    let process = Process()
    process.executableURL = try productsDirectory().appendingPathComponent("backstage-append-worker")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let handle = pipe.fileHandleForReading
    let output = await onOwnThread { handle.readDataToEndOfFile() }
    await process.exited()
    #expect(process.terminationStatus == 0, "worker \(arguments.first ?? "") exited with \(process.terminationStatus)")
    return String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
}

@Suite("Aggregate runtime across SQLite processes")
struct RuntimeProcessTests {
    @Test("a cached aggregate decides on what another process appended before the command started")
    func staleCacheAcrossProcesses() async throws {
        let db = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: db.path)
        let app = try walletApp(store)
        try await app.dispatch(Credit(id: "w", amount: 10, reference: "r1"))  // cached: balance 10
        let lines = try await runAppendWorker([
            "append", db.path, "wallet-w", "Credited",
            #"{"amount":100,"note":"from another process","reference":"r2"}"#,
        ])
        #expect(lines == ["appended 2"])
        let result = try await app.dispatch(Debit(id: "w", amount: 50))
        #expect(result.state.balance == 60)
        #expect(result.version == 3)
        #expect(result.retries == 0)
    }

    @Test("8 processes racing 64 commands for 10 seats end in domain answers only", .timeLimit(.minutes(3)))
    func hotAggregate() async throws {
        let db = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: db.path)  // migrate once before the race
        let path = db.path
        // Every process starts selling at the same instant, a moment after all were launched.
        let start = "\(Int64((Date().timeIntervalSince1970 + 3) * 1000))"
        let results = try await withThrowingTaskGroup(of: [String].self) { group in
            for _ in 0..<8 { group.addTask { try await runAppendWorker(["sell", path, "1", "10", "8", start]) } }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        var totals: [String: Int] = [:]
        for line in results where line.hasPrefix("result ") {
            for part in line.split(separator: " ").dropFirst() {
                let kv = part.split(separator: "=")
                if kv.count == 2 { totals[String(kv[0]), default: 0] += Int(kv[1]) ?? 0 }
            }
        }
        #expect(results.filter { $0.hasPrefix("result ") }.count == 8, "\(results)")
        #expect(totals["sold"] == 10, "\(totals)")
        #expect(totals["soldOut"] == 54, "\(totals)")
        #expect(totals["conflicts"] == 0, "\(totals)")
        #expect(totals["errors"] == 0, "\(totals)")
        let sold = try await store.readStream("show-s0", from: 1, direction: .forward, limit: 100)
        #expect(sold.map(\.streamVersion) == Array(1...10))
    }

    @Test("a retried command reaching the store through several app instances is never a conflict")
    func honestRetries() async throws {
        let db = try TemporaryDatabase()
        let stores = try (0..<5).map { _ in try SQLiteEventStore(path: db.path) }
        let apps = try stores.map { try walletApp($0) }
        for round in 0..<4 {
            let id = UUIDv7.next()
            let command = Credit(id: "retried\(round)", amount: 42, reference: "order-\(round)")
            let outcomes = await dispatchRetried(command, id: id, over: apps)
            let failures = outcomes.compactMap { if case .failure(let e) = $0 { "\(e)" } else { nil } }
            #expect(failures.isEmpty, "\(failures)")
            let results = outcomes.compactMap { try? $0.get() }
            #expect(results.filter { !$0.isDuplicate }.count == 1)
            #expect(results.allSatisfy { $0.version == 1 && $0.state.balance == 42 })
            #expect(try await stores[0].streamVersion("wallet-retried\(round)") == 1)
        }
    }

    @Test("driver errors reach callers as SQLiteStoreError, cancellation as CancellationError")
    func errorsAreTranslated() async throws {
        let db = try TemporaryDatabase()
        let store = try SQLiteEventStore(path: db.path)
        _ = try await store.append(
            [EventData(type: "T", data: Data("{}".utf8))], to: "s-1", expected: .any, commandID: nil)
        let task = Task { () async throws -> [RecordedEvent] in
            withUnsafeCurrentTask { $0?.cancel() }
            return try await store.readAll(after: .start, limit: 10, filter: .all)
        }
        do {
            _ = try await task.value
        } catch {
            #expect(error is CancellationError, "a cancelled read threw \(type(of: error)): \(error)")
        }
        try await store.close()
        for operation in [
            { _ = try await store.readStream("s-1", from: 1, direction: .forward, limit: 10) },
            {
                _ = try await store.append(
                    [EventData(type: "T", data: Data("{}".utf8))], to: "s-1", expected: .any, commandID: nil)
            },
            { _ = try await store.headPosition() },
        ] as [@Sendable () async throws -> Void] {
            do {
                try await operation()
                Issue.record("an operation on a closed store succeeded")
            } catch {
                #expect(error is SQLiteStoreError, "\(type(of: error)): \(error)")
            }
        }
        #expect(throws: SQLiteStoreError.self) { try SQLiteEventStore(path: db.directory.path) }
    }
}
