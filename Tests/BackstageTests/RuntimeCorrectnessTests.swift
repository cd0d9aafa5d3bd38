import Backstage
import BackstageTestSupport
import BackstageTesting
import Foundation
import Synchronization
import Testing

@Suite("Runtime correctness")
struct RuntimeCorrectnessTests {
    // MARK: Reused command ids (issue 8, defects 3 and 15)

    @Test("a command id reused for a command to another aggregate is an idempotency conflict")
    func reusedIDOtherStream() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        try await app.dispatch(OpenAccount(id: "b", owner: "Bo"))
        let id = UUIDv7.next()
        try await app.dispatch(Deposit(id: "a", amount: 7), options: DispatchOptions(commandID: id))
        await #expect(throws: EventStoreError.idempotencyConflict(commandID: id, stream: "account-a")) {
            try await app.dispatch(Deposit(id: "b", amount: 500), options: DispatchOptions(commandID: id))
        }
        // The same through the append (the id not found before deciding): same event bytes, other stream.
        let racing = try makeApp(RecordingEventStore(store, hidesStoredCommands: true))
        await #expect(throws: EventStoreError.idempotencyConflict(commandID: id, stream: "account-a")) {
            try await racing.dispatch(Deposit(id: "b", amount: 7), options: DispatchOptions(commandID: id))
        }
        #expect(try await app.load(Account.self, id: "b").state.balance == 0)
        #expect(try await store.streamVersion("account-b") == 1)
    }

    @Test("a command id reused for a different command to the same aggregate is an idempotency conflict")
    func reusedIDOtherCommand() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        let id = UUIDv7.next()
        try await app.dispatch(Deposit(id: "a", amount: 7), options: DispatchOptions(commandID: id))
        for other in [try makeApp(store), app] {  // a fresh process and the one that stored it
            await #expect(throws: EventStoreError.idempotencyConflict(commandID: id, stream: "account-a")) {
                try await other.dispatch(Deposit(id: "a", amount: 500), options: DispatchOptions(commandID: id))
            }
        }
        #expect(try await app.load(Account.self, id: "a").state.balance == 7)
    }

    @Test("a genuine duplicate returns the state after the original command and the stored times")
    func duplicateState() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        let id = UUIDv7.next()
        let first = try await app.dispatch(Deposit(id: "a", amount: 7), options: DispatchOptions(commandID: id))
        try await app.dispatch(Deposit(id: "a", amount: 100))
        for other in [app, try makeApp(store), try makeApp(RecordingEventStore(store, hidesStoredCommands: true))] {
            let again = try await other.dispatch(Deposit(id: "a", amount: 7), options: DispatchOptions(commandID: id))
            #expect(again.isDuplicate)
            #expect(again.version == 2)
            #expect(again.state.balance == 7, "the state after the original command, not the current one")
            #expect(again.recorded.map(\.id) == first.recorded.map(\.id))
        }
    }

    @Test("recorded events carry the time the store wrote")
    func recordedAtIsStored() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        let result = try await app.dispatch(OpenAccount(id: "t", owner: "Ana"))
        let stored = try await store.readStream("account-t", from: 1, direction: .forward, limit: 10)
        #expect(result.recorded.map(\.recordedAt) == stored.map(\.recordedAt))
    }

    // MARK: Stale cache (defect 4)

    @Test("a cached aggregate catches up before deciding: no rejection on state another app changed")
    func catchUpBeforeDeciding() async throws {
        let store = InMemoryEventStore()
        let app1 = try makeApp(store)
        let app2 = try makeApp(store)
        try await app1.dispatch(OpenAccount(id: "c", owner: "Ana"))
        try await app1.dispatch(Deposit(id: "c", amount: 10))  // app1 caches balance 10
        try await app2.dispatch(Deposit(id: "c", amount: 100))
        let result = try await app1.dispatch(Withdraw(id: "c", amount: 50))
        #expect(result.state.balance == 60)
        #expect(result.retries == 0)
        // An empty decision is taken on fresh state too.
        let touched = try await app1.dispatch(Touch(id: "c"))
        #expect(touched.version == 4)
    }

    @Test(
        "an aggregate that is not cached is taken to be new: no read when it is, a load and a new decision when it is not"
    )
    func uncachedAssumedNew() async throws {
        let shared = InMemoryEventStore()
        let store = RecordingEventStore(shared)
        let app1 = try makeApp(store)
        try await app1.dispatch(OpenAccount(id: "n", owner: "Ana"))
        try await app1.dispatch(Deposit(id: "n", amount: 10))
        #expect(store.readsFrom("account-n") == [])  // new, then cached and current: nothing read
        // Another app (another process) has not cached it: the empty state would reject the
        // withdrawal, so it loads the stream and decides again, without a retry.
        let app2 = try makeApp(shared)
        let withdrawn = try await app2.dispatch(Withdraw(id: "n", amount: 4))
        #expect(withdrawn.state.balance == 6)
        #expect(withdrawn.version == 3)
        #expect(withdrawn.retries == 0)
        // An empty decision is taken on the loaded state too.
        let touched = try await makeApp(shared).dispatch(Touch(id: "n"))
        #expect(touched.version == 3)
        #expect(touched.state.balance == 6)
        // A command the empty state accepts: the append expecting no stream conflicts, then it is
        // decided again on the loaded state.
        try await app1.dispatch(Increment(id: "k", events: 2))
        let incremented = try await makeApp(shared).dispatch(Increment(id: "k"))
        #expect(incremented.version == 3)
        #expect(incremented.state.count == 3)
        #expect(incremented.retries == 0)
        #expect(try await shared.streamVersion("counter-k") == 3)
        #expect(try await shared.streamVersion("account-n") == 3)
    }

    // MARK: Identity (defect 11)

    @Test("canonically equivalent ids are two aggregates")
    func nfcAndNFD() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        let nfc = "caf\u{E9}"
        let nfd = "cafe\u{301}"
        #expect(nfc == nfd)  // Swift's String says equal; the stores compare bytes
        try await app.dispatch(OpenAccount(id: nfc, owner: "NFC"))
        let opened = try await app.dispatch(OpenAccount(id: nfd, owner: "NFD"))
        #expect(opened.version == 1)
        #expect(try await app.load(Account.self, id: nfc).state.owner == "NFC")
        #expect(try await app.load(Account.self, id: nfd).state.owner == "NFD")
        try await app.dispatch(Deposit(id: nfd, amount: 5))
        #expect(try await makeApp(store).dispatch(Touch(id: nfc)).state.balance == 0)
        #expect(streamCategory("a\u{301}-b-\u{301}c") == "a\u{301}")
        #expect(Array(streamCategory("x-\u{301}y").utf8) == Array("x".utf8))
    }

    // MARK: Conflicts (defect 13)

    @Test("conflicts are retried after a growing, jittered wait")
    func backoff() async throws {
        let shared = InMemoryEventStore()
        let remaining = Locked(0)
        // Another writer gets in first three times, once the aggregate exists.
        let store = interferedStore(shared, interferences: remaining)
        let app = try makeApp(store) {
            $0.conflictBackoff = .milliseconds(20)
            $0.maxConflictBackoff = .milliseconds(40)
        }
        try await app.dispatch(Increment(id: "b"))
        // The first conflict finds the cached state behind (decided again at once); three retries follow.
        remaining.withLock { $0 = 4 }
        let started = ContinuousClock.now
        let result = try await app.dispatch(Increment(id: "b"))
        let elapsed = ContinuousClock.now - started
        #expect(result.retries == 3)
        #expect(result.version == 6)
        // Waits of at least 10 + 20 + 20 ms (half of 20, 40, 40).
        #expect(elapsed >= .milliseconds(50))
    }
}
