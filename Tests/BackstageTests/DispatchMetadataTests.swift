import Backstage
import Foundation
import Testing

@Suite("Dispatch metadata")
struct DispatchMetadataTests {
    @Test("a command's own causation id is stored with its events; their causation id is the command")
    func causationRecorded() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        let cause = UUIDv7.next()
        let command = UUIDv7.next()
        try await app.dispatch(
            OpenAccount(id: "a", owner: "Ana"), options: DispatchOptions(commandID: command, causationID: cause))
        let stored = try #require(try await store.readStream("account-a", from: 1, direction: .forward, limit: 1).first)
        #expect(stored.metadata.fields[commandCausationField] == cause.uuidString.lowercased())
        #expect(stored.metadata.causationID == command)
        #expect(stored.metadata.commandID == command)

        // Without one, nothing is added.
        try await app.dispatch(Deposit(id: "a", amount: 5))
        let second = try #require(try await store.readStream("account-a", from: 2, direction: .forward, limit: 1).first)
        #expect(second.metadata.fields[commandCausationField] == nil)
    }
}
