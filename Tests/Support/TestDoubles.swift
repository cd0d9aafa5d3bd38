import Backstage
import BackstageSQLite
import Foundation
import GRDB
import Synchronization

/// A value behind a lock, shareable between tasks and storable in arrays (its `value` is the
/// mutex itself).
package final class Locked<T: Sendable>: Sendable {
    package let value: Mutex<T>
    package init(_ initial: T) { value = Mutex(initial) }
    package func withLock<R>(_ body: (inout T) -> R) -> R { value.withLock { body(&$0) } }
}

/// A value behind a lock, shared by the closures of a test.
package final class TestBox<T: Sendable>: Sendable {
    private let m: Mutex<T>
    package init(_ value: T) { m = Mutex(value) }
    package func with<R: Sendable>(_ body: (inout T) throws -> R) rethrows -> R { try m.withLock { try body(&$0) } }
    package func withLock<R: Sendable>(_ body: (inout T) throws -> R) rethrows -> R { try with(body) }
    package var value: T { m.withLock { $0 } }
}

/// A handler defined by a closure that receives each batch.
package struct ClosureHandler: EventHandler {
    package let name: String
    package var filter: EventFilter
    package var options: HandlerOptions
    let body: @Sendable ([RecordedEvent]) async throws -> Void

    package init(
        name: String, filter: EventFilter = .all, options: HandlerOptions = HandlerOptions(),
        _ body: @escaping @Sendable ([RecordedEvent]) async throws -> Void
    ) {
        self.name = name
        self.filter = filter
        self.options = options
        self.body = body
    }

    package func handle(_ event: RecordedEvent) async throws { try await body([event]) }
    package func handle(batch: [RecordedEvent]) async throws { try await body(batch) }
}

/// The read model of the projection crash test, used by the worker that gets killed and by the
/// test process that rebuilds it from scratch: per stream, the count and total of `n`, and every
/// applied position. `onApplied` runs inside the batch's transaction.
package struct CrashReadModel: SQLiteReadModel {
    package let name = "crash"
    package let tables = ["crash_tally", "crash_applied"]
    let onApplied: (@Sendable (RecordedEvent) -> Void)?

    package init(onApplied: (@Sendable (RecordedEvent) -> Void)? = nil) {
        self.onApplied = onApplied
    }

    package func createTables(in db: Database, tables: ProjectionTables) throws {
        try db.execute(
            sql: """
                CREATE TABLE \(try tables.table("crash_tally")) (
                    stream TEXT PRIMARY KEY, n INTEGER NOT NULL, total INTEGER NOT NULL, last_version INTEGER NOT NULL);
                CREATE TABLE \(try tables.table("crash_applied")) (position INTEGER NOT NULL);
                """)
    }

    package func apply(_ event: RecordedEvent, in db: Database, tables: ProjectionTables) throws {
        struct Body: Decodable { var n: Int }
        let body = try JSONDecoder().decode(Body.self, from: event.data)
        try db.execute(
            sql: """
                INSERT INTO \(try tables.table("crash_tally")) (stream, n, total, last_version) VALUES (?, 1, ?, ?)
                ON CONFLICT (stream) DO UPDATE SET n = n + 1, total = total + excluded.total,
                    last_version = excluded.last_version
                """, arguments: [event.stream, body.n, event.streamVersion])
        try db.execute(
            sql: "INSERT INTO \(try tables.table("crash_applied")) (position) VALUES (?)", arguments: [event.position])
        onApplied?(event)
    }
}
