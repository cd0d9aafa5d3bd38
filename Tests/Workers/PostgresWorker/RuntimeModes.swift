// Modes of the PostgreSQL worker for the aggregate runtime (issue 8: stale caches).
import Backstage
import BackstagePostgres
import Foundation

/// `append <url> <schema> <stream> <type> <json>`: appends one event (expected version: any)
/// from this process and prints `appended <stream version>`.
func runAppendMode(_ arguments: [String]) async throws {
    guard arguments.count == 7 else { fail("usage: append <url> <schema> <stream> <type> <json>") }
    let store = try await PostgresEventStore(
        url: arguments[2], configuration: storeConfiguration(schema: arguments[3], connections: 1))
    let result = try await store.append(
        [EventData(type: arguments[5], data: Data(arguments[6].utf8))], to: arguments[4], expected: .any,
        commandID: nil)
    emit("appended \(result.lastVersion)")
    await store.close()
}
