import Backstage
import Foundation
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    /// Reads run as statements prepared on their connection and decode rows by position.
    @Suite("Prepared reads on PostgreSQL")
    struct PreparedReads {
        @Test(
            "a read that failed on a connection (its schema was gone) works on that connection once the schema is back")
        func recoversAfterAFailedPreparation() async throws {
            // One connection: the failed read and the later ones share it.
            let oneConnection: (inout PostgresEventStore.Configuration) -> Void = { $0.maximumConnections = 1 }
            try await withFreshStore(configure: oneConnection) { store in
                _ = try await store.append(
                    [EventData(type: "Noted", data: Data(#"{"n":1}"#.utf8))], to: "note-1", expected: .noStream,
                    commandID: nil)
                try await store.dropSchema()
                await #expect(throws: PostgresStoreError.self) {
                    _ = try await store.readAll(after: .start, limit: 10, filter: .all)
                }
                await #expect(throws: PostgresStoreError.self) {
                    _ = try await store.readStream("note-1", from: 1, direction: .forward, limit: 10)
                }
                try await store.migrate()
                _ = try await store.append(
                    [EventData(type: "Noted", data: Data(#"{"n":2}"#.utf8))], to: "note-2", expected: .noStream,
                    commandID: nil)
                let all = try await store.readAll(after: .start, limit: 10, filter: .all)
                #expect(all.map(\.stream) == ["note-2"])
                let stream = try await store.readStream("note-2", from: 1, direction: .forward, limit: 10)
                #expect(stream.map(\.data) == [Data(#"{"n": 2}"#.utf8)])
                #expect(try await store.headPosition() == all.last?.logPosition)
            }
        }

        @Test("metadata fields, ids and positions read back exactly through every read")
        func fieldsReadBack() async throws {
            try await withFreshStore { store in
                let fields = [
                    "plain": "value", "quote": #"a "quoted" \ back\slash"#, "lines": "one\ntwo\tthree\u{1}",
                    "unicode": "Zürich 😀 東京", "empty": "", "": "empty key",
                ]
                let ids = (UUID(), UUID(), UUID())
                let metadata = EventMetadata(commandID: ids.0, causationID: ids.1, correlationID: ids.2, fields: fields)
                let appended = try await store.append(
                    [
                        EventData(type: "Noted", data: Data(#"{"n":1}"#.utf8), metadata: metadata),
                        EventData(type: "Noted", data: Data(#"{"n":2}"#.utf8)),
                    ], to: "note-1", expected: .noStream, commandID: nil)
                let all = try await store.readAll(
                    after: .start, limit: 10, filter: EventFilter(types: ["Noted"], categories: ["note"]))
                let stream = try await store.readStream("note-1", from: 2, direction: .backward, limit: 10)
                #expect(all.count == 2)
                #expect(stream.map(\.streamVersion) == [2, 1])
                for events in [all, stream.reversed()] {
                    #expect(events.first?.metadata == metadata)
                    #expect(events.last?.metadata.fields == [:])
                    #expect(events.map(\.transaction) == [appended.transaction, appended.transaction])
                    #expect(events.map(\.position) == [appended.firstPosition, appended.lastPosition])
                }
                #expect(try await store.headPosition().transaction == appended.transaction)
            }
        }
    }
}

/// The record of reads known to be complete below a horizon (no server needed).
@Suite("Complete reads (PostgreSQL read path)")
struct CompleteReadsTests {
    @Test("a read is known complete only from the same position and filter, at a horizon not above the recorded one")
    func knownComplete() {
        let reads = CompleteReads()
        let at = LogPosition(transaction: 10, position: 5)
        let filter = EventFilter(types: ["A"])
        #expect(!reads.isComplete(after: at, filter: filter, below: 20))
        reads.record(after: at, filter: filter, below: 20)
        #expect(reads.isComplete(after: at, filter: filter, below: 20))
        #expect(reads.isComplete(after: at, filter: filter, below: 15))
        #expect(!reads.isComplete(after: at, filter: filter, below: 21))
        #expect(!reads.isComplete(after: at, filter: .all, below: 20))
        #expect(!reads.isComplete(after: LogPosition(transaction: 10, position: 4), filter: filter, below: 20))
        // A lower horizon recorded later does not forget what the higher one established.
        reads.record(after: at, filter: filter, below: 12)
        #expect(reads.isComplete(after: at, filter: filter, below: 20))
    }

    @Test("the record is bounded: the oldest entries are forgotten")
    func bounded() {
        let reads = CompleteReads()
        for p in 0..<100 {
            reads.record(after: LogPosition(transaction: 1, position: Int64(p)), filter: .all, below: 5)
        }
        #expect(!reads.isComplete(after: LogPosition(transaction: 1, position: 0), filter: .all, below: 5))
        #expect(reads.isComplete(after: LogPosition(transaction: 1, position: 99), filter: .all, below: 5))
    }
}
