import Backstage
import BackstageTesting
import Foundation
import Testing

/// Records every middleware call in a shared journal; optionally rejects before dispatch.
struct JournalMiddleware: Middleware {
    var name: String
    var journal: Journal
    var reject: (any Error)? = nil
    var addField: (String, String)? = nil

    func beforeDispatch(_ context: inout CommandContext) async throws {
        journal.record("\(name).before \(context.commandName)")
        if let field = addField { context.fields[field.0] = field.1 }
        if let reject { throw reject }
    }

    func afterDispatch(_ context: CommandContext, result: DispatchSummary) async {
        journal.record(
            "\(name).after events=\(result.eventCount) version=\(result.version) duplicate=\(result.isDuplicate)")
    }

    func afterFailure(_ context: CommandContext, error: any Error) async {
        journal.record("\(name).failure \(error)")
    }
}

@Suite("Dispatch")
struct DispatchTests {
    @Test("dispatch returns the events, the new version and the state")
    func returnsEventsVersionState() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        let opened = try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        #expect(opened.events == [.opened(AccountOpened(owner: "Ana"))])
        #expect(opened.version == 1)
        #expect(opened.stream == "account-a")
        #expect(opened.state.owner == "Ana")

        let result = try await app.dispatch(Deposit(id: "a", amount: 30, note: "salary", times: 2))
        #expect(result.events == Array(repeating: .deposited(MoneyDeposited(amount: 30, note: "salary")), count: 2))
        #expect(result.version == 3)
        #expect(result.state.balance == 60)
        #expect(result.state.eventCount == 3)
        #expect(!result.isDuplicate)
        #expect(result.retries == 0)

        let stored = try await store.readStream("account-a", from: 2, direction: .forward, limit: 10)
        #expect(result.recorded.map(\.id) == stored.map(\.id))
        #expect(result.recorded.map(\.position) == stored.map(\.position))
        #expect(result.recorded.map(\.streamVersion) == [2, 3])
        #expect(result.recorded.map(\.type) == ["MoneyDeposited", "MoneyDeposited"])
        #expect(result.recorded.map(\.metadata) == stored.map(\.metadata))
        #expect(try await app.load(Account.self, id: "a").state == result.state)
    }

    @Test("recorded events carry the store's positions when an append's positions have gaps")
    func positionsWithGaps() async throws {
        let store = SpacedStore()
        let app = try makeApp(store)
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        let result = try await app.dispatch(Deposit(id: "a", amount: 1, times: 3))
        let stored = try await store.readStream("account-a", from: 2, direction: .forward, limit: 10)
        #expect(result.recorded.map(\.position) == stored.map(\.position))
        #expect(result.recorded.map(\.id) == stored.map(\.id))
        #expect(result.recorded.last?.logPosition == stored.last?.logPosition)
    }

    @Test("a command that decides no events stores nothing")
    func noEvents() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        let head = try await store.headPosition()
        let result = try await app.dispatch(Touch(id: "a"))
        #expect(result.events.isEmpty)
        #expect(result.version == 1)
        #expect(result.state.owner == "Ana")
        #expect(try await store.headPosition() == head)
    }

    @Test("stored metadata carries command, causation and correlation ids and the fields")
    func metadata() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(
            store, middleware: [JournalMiddleware(name: "m", journal: Journal(), addField: ("tenant", "t1"))])
        let plain = try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        let correlation = UUIDv7.next()
        let commandID = UUIDv7.next()
        let traced = try await app.dispatch(
            Deposit(id: "a", amount: 5, times: 2),
            options: DispatchOptions(commandID: commandID, correlationID: correlation, fields: ["user": "ana"]))
        #expect(traced.commandID == commandID)

        let stored = try await store.readStream("account-a", from: 1, direction: .forward, limit: 10)
        #expect(stored.count == 3)
        #expect(
            stored[0].metadata
                == EventMetadata(
                    commandID: plain.commandID, causationID: plain.commandID, correlationID: plain.commandID,
                    fields: ["tenant": "t1"]))
        // An explicit command id stores the command's fingerprint with the fields.
        let fingerprint = try #require(stored[1].metadata.fields[commandFingerprintField])
        #expect(fingerprint.hasPrefix("Deposit:"))
        for e in stored[1...] {
            #expect(
                e.metadata
                    == EventMetadata(
                        commandID: commandID, causationID: commandID, correlationID: correlation,
                        fields: ["user": "ana", "tenant": "t1", commandFingerprintField: fingerprint]))
        }
        #expect(plain.commandID != commandID)
    }

    @Test("middleware runs in order before and after a successful dispatch")
    func middlewareOrderOnSuccess() async throws {
        let journal = Journal()
        let app = try makeApp(
            InMemoryEventStore(),
            middleware: [
                JournalMiddleware(name: "A", journal: journal), JournalMiddleware(name: "B", journal: journal),
            ])
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        #expect(
            journal.all == [
                "A.before OpenAccount", "B.before OpenAccount",
                "A.after events=1 version=1 duplicate=false", "B.after events=1 version=1 duplicate=false",
            ])
    }

    @Test("a rejection runs the failure hooks with the aggregate's own error")
    func middlewareOnRejection() async throws {
        let journal = Journal()
        let store = InMemoryEventStore()
        let app = try makeApp(
            store,
            middleware: [
                JournalMiddleware(name: "A", journal: journal), JournalMiddleware(name: "B", journal: journal),
            ])
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        try await app.dispatch(Deposit(id: "a", amount: 10))
        let head = try await store.headPosition()
        let journalBefore = journal.all.count

        let rejection = Account.Rejection.insufficientFunds(balance: 10, requested: 50)
        await #expect(throws: rejection) { try await app.dispatch(Withdraw(id: "a", amount: 50)) }
        do {
            try await app.dispatch(Withdraw(id: "a", amount: 50))
            Issue.record("the withdrawal was accepted")
        } catch let error as Account.Rejection {
            #expect(error == rejection)  // typed: no string matching needed
        }
        await #expect(throws: Account.Rejection.notOpen) { try await app.dispatch(Deposit(id: "nobody", amount: 1)) }

        #expect(try await store.headPosition() == head)
        #expect(
            Array(journal.all[journalBefore..<(journalBefore + 4)]) == [
                "A.before Withdraw", "B.before Withdraw", "A.failure \(rejection)", "B.failure \(rejection)",
            ])
        #expect(try await app.load(Account.self, id: "a").state.balance == 10)
    }

    @Test("attempt returns the aggregate's rejection typed and throws every other error")
    func attemptTypesRejections() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        let deposited = try await app.attempt(Deposit(id: "a", amount: 5))
        #expect(try deposited.get().version == 2)
        let outcome: Result<Dispatched<Account>, Account.Rejection> = try await app.attempt(
            Withdraw(id: "a", amount: 9))
        guard case .failure(.insufficientFunds(let balance, let requested)) = outcome else {
            Issue.record("expected a typed rejection, got \(outcome)")
            return
        }
        #expect(balance == 5 && requested == 9)
        // A middleware's rejection is not the aggregate's: it is thrown.
        await #expect(throws: InvalidCommand(reason: "amount must be positive")) {
            _ = try await app.attempt(Deposit(id: "a", amount: 0))
        }
        #expect(try await store.streamVersion("account-a") == 2)
    }

    @Test("a middleware that rejects stops the dispatch before the aggregate is loaded")
    func middlewareRejects() async throws {
        let journal = Journal()
        let store = RecordingEventStore()
        let refusal = InvalidCommand(reason: "not today")
        let app = try makeApp(
            store,
            middleware: [
                JournalMiddleware(name: "A", journal: journal, reject: refusal),
                JournalMiddleware(name: "B", journal: journal),
            ])
        await #expect(throws: refusal) { try await app.dispatch(OpenAccount(id: "a", owner: "Ana")) }
        #expect(journal.all == ["A.before OpenAccount", "A.failure \(refusal)", "B.failure \(refusal)"])
        #expect(store.readCount == 0)
        #expect(store.appendCount == 0)
        #expect(try await store.headPosition() == .start)
    }

    @Test("ValidationMiddleware rejects invalid commands before anything is read or stored")
    func validation() async throws {
        let store = RecordingEventStore()
        let app = try makeApp(store)  // ValidationMiddleware is the default
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        store.forget()
        let head = try await store.headPosition()
        await #expect(throws: InvalidCommand(reason: "amount must be positive")) {
            try await app.dispatch(Deposit(id: "fresh", amount: 0))
        }
        await #expect(throws: InvalidCommand(reason: "owner is empty")) {
            try await app.dispatch(OpenAccount(id: "b", owner: ""))
        }
        #expect(store.readCount == 0)
        #expect(store.appendCount == 0)
        #expect(try await store.headPosition() == head)

        // Custom middleware keeps validation.
        let custom = BackstageApp(
            store: store, router: try makeRouter(), middleware: [JournalMiddleware(name: "m", journal: Journal())])
        await #expect(throws: InvalidCommand.self) { try await custom.dispatch(Deposit(id: "a", amount: 0)) }

        // Without validation, the same command reaches the aggregate.
        var configuration = BackstageApp.Configuration()
        configuration.validatesCommands = false
        let unchecked = BackstageApp(store: store, router: try makeRouter(), configuration: configuration)
        let result = try await unchecked.dispatch(Deposit(id: "a", amount: 0))
        #expect(result.version == 2)
    }

    @Test("a dispatch with a known command id returns the original result and writes nothing")
    func idempotentDispatch() async throws {
        let store = InMemoryEventStore()
        let journal = Journal()
        let app = try makeApp(store, middleware: [JournalMiddleware(name: "m", journal: journal)])
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        let commandID = UUIDv7.next()
        let first = try await app.dispatch(
            Deposit(id: "a", amount: 7, times: 2), options: DispatchOptions(commandID: commandID))
        #expect(!first.isDuplicate)
        try await app.dispatch(Deposit(id: "a", amount: 100))
        let head = try await store.headPosition()

        let again = try await app.dispatch(
            Deposit(id: "a", amount: 7, times: 2), options: DispatchOptions(commandID: commandID))
        #expect(again.isDuplicate)
        #expect(again.commandID == commandID)
        #expect(again.events == first.events)
        #expect(again.recorded.map(\.id) == first.recorded.map(\.id))
        #expect(again.version == first.version)
        #expect(try await store.headPosition() == head)
        #expect(journal.all.last == "m.after events=0 version=3 duplicate=true")

        // Another application instance (an empty cache) gives the same answer.
        let other = try makeApp(store)
        let fromOther = try await other.dispatch(
            Deposit(id: "a", amount: 7, times: 2), options: DispatchOptions(commandID: commandID))
        #expect(fromOther.isDuplicate)
        #expect(fromOther.recorded.map(\.id) == first.recorded.map(\.id))
        #expect(try await store.headPosition() == head)
        #expect(try await app.load(Account.self, id: "a").state.balance == 114)
    }

    @Test("load and history read the store")
    func loadAndHistory() async throws {
        let app = try makeApp(InMemoryEventStore())
        let empty = try await app.load(Account.self, id: "none")
        #expect(empty.version == 0)
        #expect(empty.state == Account())
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        try await app.dispatch(Deposit(id: "a", amount: 3))
        let history = try await app.history(Account.self, id: "a")
        #expect(
            history.map(\.event) == [
                .opened(AccountOpened(owner: "Ana")), .deposited(MoneyDeposited(amount: 3, note: "")),
            ])
        #expect(history.map(\.recorded.streamVersion) == [1, 2])
    }

    @Test("state as of a stream version or a point in time")
    func historicalState() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store) { $0.loadPageSize = 2 }  // several pages per load
        let beforeAll = Date()
        try await app.dispatch(OpenAccount(id: "a", owner: "Ana"))
        try await app.dispatch(Deposit(id: "a", amount: 10))
        try await app.dispatch(Deposit(id: "a", amount: 20))
        let middle = Date()
        try await app.dispatch(Withdraw(id: "a", amount: 5))
        try await app.dispatch(Deposit(id: "a", amount: 1))

        let v2 = try await app.load(Account.self, id: "a", atVersion: 2)
        #expect(v2.version == 2)
        #expect(v2.state.balance == 10)
        #expect(try await app.load(Account.self, id: "a", atVersion: 4).state.balance == 25)
        let v0 = try await app.load(Account.self, id: "a", atVersion: 0)
        #expect(v0.version == 0)
        #expect(v0.state == Account())
        let beyond = try await app.load(Account.self, id: "a", atVersion: 99)
        #expect(beyond.version == 5)
        #expect(beyond.state.balance == 26)

        let atMiddle = try await app.load(Account.self, id: "a", at: middle)
        #expect(atMiddle.version == 3)
        #expect(atMiddle.state.balance == 30)
        let stored = try await store.readStream("account-a", from: 1, direction: .forward, limit: 10)
        let atSecond = try await app.load(Account.self, id: "a", at: stored[1].recordedAt)
        #expect(atSecond.version >= 2 && atSecond.version <= 3)  // events 2 and 3 may share a timestamp
        #expect(try await app.load(Account.self, id: "a", at: beforeAll.addingTimeInterval(-1)).version == 0)
        #expect(try await app.load(Account.self, id: "a", at: Date()).version == 5)
    }
}
