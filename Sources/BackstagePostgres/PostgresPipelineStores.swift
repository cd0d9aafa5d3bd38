import Backstage
import Foundation
import Logging
import PostgresNIO

/// Checkpoints in the store's schema, shared by every process.
///
/// ``commit(_:expected:new:token:)`` is a compare-and-set fenced twice: the stored checkpoint must
/// be at `expected` with a token not newer than `token`, and `token` must not be older than the
/// subscription's current lease (see ``PostgresLeadership``), so a process that lost its lease
/// cannot move the checkpoint even before the new leader's first commit.
package final class PostgresCheckpointStore: CheckpointStore {
    /// The store whose schema holds the checkpoints.
    package let store: PostgresEventStore

    /// Uses the checkpoints table of `store`'s schema.
    public init(store: PostgresEventStore) {
        self.store = store
    }

    public func checkpoint(_ subscription: String) async throws -> Checkpoint? {
        try await store.run { conn in try await Self.checkpoint(subscription, store: self.store, on: conn, lock: false)
        }
    }

    public func commit(_ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64) async throws {
        try await store.run { conn in
            try await PostgresTransaction.run(on: conn, logger: self.store.queryLogger) { conn in
                try await Self.commit(
                    subscription, expected: expected, new: new, token: token, store: self.store, on: conn)
                return ((), true)
            }
        }
    }

    public func checkpoints() async throws -> [Checkpoint] {
        try await store.run { conn in
            let rows = try await conn.query(
                """
                SELECT subscription, transaction_id::text, position, token, updated_at
                FROM \(unescaped: self.store.s).checkpoints ORDER BY subscription
                """, logger: self.store.queryLogger)
            var all: [Checkpoint] = []
            for try await (subscription, transaction, position, token, updatedAt)
                in rows.decode((String, String, Int64, Int64, Date).self)
            {
                all.append(
                    Checkpoint(
                        subscription: subscription,
                        position: LogPosition(
                            transaction: try PostgresEventStore.parseTransaction(transaction), position: position),
                        token: token, updatedAt: updatedAt))
            }
            return all
        }
    }

    public func delete(_ subscription: String) async throws {
        try await store.run { conn in
            _ = try await conn.query(
                "DELETE FROM \(unescaped: self.store.s).checkpoints WHERE subscription = \(subscription)",
                logger: self.store.queryLogger)
        }
    }

    static func checkpoint(
        _ subscription: String, store: PostgresEventStore, on conn: PostgresConnection, lock: Bool
    ) async throws -> Checkpoint? {
        let rows = try await conn.query(
            """
            SELECT transaction_id::text, position, token, updated_at FROM \(unescaped: store.s).checkpoints
            WHERE subscription = \(subscription) \(unescaped: lock ? "FOR UPDATE" : "")
            """, logger: store.queryLogger)
        for try await (transaction, position, token, updatedAt) in rows.decode((String, Int64, Int64, Date).self) {
            return Checkpoint(
                subscription: subscription,
                position: LogPosition(
                    transaction: try PostgresEventStore.parseTransaction(transaction), position: position),
                token: token, updatedAt: updatedAt)
        }
        return nil
    }

    /// The compare-and-set, inside the caller's transaction (a projection's batch).
    /// - Throws: `CheckpointError` (nothing is written then).
    static func commit(
        _ subscription: String, expected: LogPosition?, new: LogPosition, token: Int64, store: PostgresEventStore,
        on conn: PostgresConnection
    ) async throws {
        // The lease row is read with a share lock: a takeover (which updates it) waits for this
        // commit, or this commit sees the new token. A lease with an expiry (a partition's) also
        // bounds how long this transaction may sit idle: a process paused in the middle of it
        // (SIGSTOP) would otherwise keep the row locked, and the partition from its next owner,
        // for as long as it stays paused; the server ends such a session once the lease expires.
        let leases = try await conn.query(
            """
            SELECT token, set_config('idle_in_transaction_session_timeout',
                CASE WHEN expires_at IS NULL THEN current_setting('idle_in_transaction_session_timeout')
                     WHEN expires_at <= now() THEN '1000'
                     ELSE greatest(1000, 1000 * extract(epoch FROM expires_at - now()))::bigint::text END, true)
            FROM \(unescaped: store.s).leases WHERE subscription = \(subscription) FOR SHARE
            """,
            logger: store.queryLogger)
        for try await (current, _) in leases.decode((Int64, String).self) where token < current {
            throw CheckpointError.fenced(subscription: subscription, token: token, current: current)
        }
        let stored = try await checkpoint(subscription, store: store, on: conn, lock: true)
        try checkCheckpointCommit(subscription, stored: stored, expected: expected, token: token)
        if stored == nil {
            let inserted = try await conn.query(
                """
                INSERT INTO \(unescaped: store.s).checkpoints (subscription, transaction_id, position, token)
                VALUES (\(subscription), \(String(new.transaction))::xid8, \(new.position), \(token))
                ON CONFLICT (subscription) DO NOTHING RETURNING position
                """, logger: store.queryLogger)
            var wrote = false
            for try await _ in inserted.decode(Int64.self) { wrote = true }
            if !wrote {
                // Another process created it first.
                let actual = try await checkpoint(subscription, store: store, on: conn, lock: false)
                throw CheckpointError.conflict(subscription: subscription, expected: expected, actual: actual?.position)
            }
        } else {
            _ = try await conn.query(
                """
                UPDATE \(unescaped: store.s).checkpoints
                SET transaction_id = \(String(new.transaction))::xid8, position = \(new.position), token = \(token),
                    updated_at = now()
                WHERE subscription = \(subscription)
                """, logger: store.queryLogger)
        }
    }
}

/// Parked events in the store's schema: the record points at the event in the log (events are
/// immutable, so the event itself is not copied).
package final class PostgresParkedEventStore: ParkedEventStore {
    /// The store whose schema holds the parked events.
    package let store: PostgresEventStore

    /// Uses the parked-events table of `store`'s schema.
    package init(store: PostgresEventStore) {
        self.store = store
    }

    package func park(_ parked: ParkedEvent) async throws {
        let attempts = Int32(clamping: parked.attempts)
        let position = parked.event.logPosition
        try await store.run { conn in
            _ = try await conn.query(
                """
                INSERT INTO \(unescaped: self.store.s).parked_events
                    (subscription, transaction_id, position, error, attempts, parked_at)
                VALUES (\(parked.subscription), \(String(position.transaction))::xid8, \(position.position),
                        \(parked.error), \(attempts), \(parked.parkedAt))
                ON CONFLICT (subscription, transaction_id, position) DO UPDATE
                SET error = excluded.error, attempts = excluded.attempts, parked_at = excluded.parked_at
                """, logger: self.store.queryLogger)
        }
    }

    package func parkedEvents(subscription: String?, limit: Int) async throws -> [ParkedEvent] {
        guard limit > 0 else { return [] }
        return try await select(
            subscription == nil ? "TRUE" : "p.subscription = $1", binds: subscription.map { [$0] } ?? [], limit: limit)
    }

    package func parkedEvent(subscription: String, position: LogPosition) async throws -> ParkedEvent? {
        try await select(
            "p.subscription = $1 AND p.transaction_id = $2::xid8 AND p.position = $3::bigint",
            binds: [subscription, String(position.transaction), String(position.position)], limit: 1
        ).first
    }

    package func update(_ parked: ParkedEvent, expectedAttempts: Int) async throws -> Bool {
        let attempts = Int32(clamping: parked.attempts)
        let expected = Int32(clamping: expectedAttempts)
        let position = parked.event.logPosition
        return try await store.run { conn in
            let rows = try await conn.query(
                """
                UPDATE \(unescaped: self.store.s).parked_events
                SET error = \(parked.error), attempts = \(attempts), parked_at = \(parked.parkedAt)
                WHERE subscription = \(parked.subscription) AND transaction_id = \(String(position.transaction))::xid8
                  AND position = \(position.position) AND attempts = \(expected)
                RETURNING position
                """, logger: self.store.queryLogger)
            var updated = false
            for try await _ in rows.decode(Int64.self) { updated = true }
            return updated
        }
    }

    @discardableResult
    package func remove(subscription: String, position: LogPosition) async throws -> ParkedEvent? {
        guard let parked = try await parkedEvent(subscription: subscription, position: position) else { return nil }
        let removed = try await store.run { conn in
            try await Self.remove(subscription: subscription, position: position, store: self.store, on: conn)
        }
        return removed ? parked : nil
    }

    /// Removes a parked record inside the caller's transaction; false when there was none.
    static func remove(
        subscription: String, position: LogPosition, store: PostgresEventStore, on conn: PostgresConnection
    ) async throws -> Bool {
        let rows = try await conn.query(
            """
            DELETE FROM \(unescaped: store.s).parked_events
            WHERE subscription = \(subscription) AND transaction_id = \(String(position.transaction))::xid8
              AND position = \(position.position)
            RETURNING position
            """, logger: store.queryLogger)
        var removed = false
        for try await _ in rows.decode(Int64.self) { removed = true }
        return removed
    }

    /// Parked events matching `condition` (a constant of this file with `$n` placeholders for
    /// `binds`, all text and cast in the condition), oldest position first.
    private func select(_ condition: String, binds: [String], limit: Int) async throws -> [ParkedEvent] {
        var bindings = PostgresBindings(capacity: binds.count + 1)
        for b in binds { bindings.append(b) }
        bindings.append(Int64(limit))
        let sql = """
            SELECT \(PostgresEventStore.eventColumns(prefix: "e.")), p.subscription, p.error, p.attempts, p.parked_at
            FROM \(store.s).parked_events p JOIN \(store.s).events e ON e.position = p.position
            WHERE \(condition)
            ORDER BY p.transaction_id, p.position, p.subscription LIMIT $\(binds.count + 1)
            """
        let query = PostgresQuery(unsafeSQL: sql, binds: bindings)
        return try await store.run { conn in
            let rows = try await conn.query(query, logger: self.store.queryLogger)
            var parked: [ParkedEvent] = []
            for try await row in rows {
                let r = row.makeRandomAccess()
                parked.append(
                    ParkedEvent(
                        subscription: try r[13].decode(String.self), event: try PostgresEventStore.decodeEvent(r),
                        error: try r[14].decode(String.self), attempts: Int(try r[15].decode(Int32.self)),
                        parkedAt: try r[16].decode(Date.self)))
            }
            return parked
        }
    }
}

extension ProjectionCommit {
    /// Performs the commit inside the transaction open on `conn`: the checkpoint's compare-and-set,
    /// or the removal of the replayed parked event (`PipelineError.parkedEventNotFound` when it is gone).
    func perform(store: PostgresEventStore, on conn: PostgresConnection) async throws {
        switch self {
        case .checkpoint(let subscription, let expected, let new, let token):
            try await PostgresCheckpointStore.commit(
                subscription, expected: expected, new: new, token: token, store: store, on: conn)
        case .replay(let subscription, let position):
            guard
                try await PostgresParkedEventStore.remove(
                    subscription: subscription, position: position, store: store, on: conn)
            else {
                throw PipelineError.parkedEventNotFound(subscription: subscription, position: position)
            }
        }
    }
}
