import Backstage
import Foundation
import GRDB
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One active consumer per subscription among the processes that open one SQLite file: a lease
/// row per subscription in the file (`backstage_leases`), with a fencing token that rises on
/// every takeover, the owner, and an expiry renewed by a heartbeat.
///
/// - ``acquire(_:)`` tries every ``Configuration/retryInterval`` to take the lease: it succeeds
///   when there is no lease row, when the lease was released, when it expired (its holder stopped
///   renewing it for ``Configuration/leaseDuration``), or when its holder was a process of this
///   host that no longer exists (a crashed process is replaced at once). Taking it increments the
///   token (above every token stored in the file's checkpoints too) and returns it.
/// - While leading, ``run()`` (which `PipelineService` runs for its lifetime) renews every lease
///   held by this election each ``Configuration/heartbeatInterval``, in one short write
///   transaction; without it running, leases run out after ``Configuration/leaseDuration``. ``isLeader(_:token:)``
///   turns false when a renewal finds the lease taken over, or when the lease's time ran out
///   without a successful renewal (measured from before the renewal was written, so this process
///   gives up no later than another one may take over).
/// - `SQLiteCheckpointStore` rejects a commit whose token is older than the lease row's
///   (`CheckpointError.fenced(subscription:token:current:)`), in the commit's own transaction:
///   a process that lost its lease cannot move a checkpoint, even before it notices. This holds
///   for checkpoints in the same file as the lease rows.
///
/// Expiry compares wall-clock times of the processes sharing the file (one host).
public final class SQLiteLeadership: LeaderElection {
    /// Settings of the election.
    public struct Configuration: Sendable {
        /// How long a lease stays valid without renewal; another process takes it over after that.
        public var leaseDuration: Duration = .seconds(10)
        /// How often the leader renews its leases (well below ``leaseDuration``).
        public var heartbeatInterval: Duration = .seconds(2)
        /// How often a candidate tries to take a lease.
        public var retryInterval: Duration = .milliseconds(500)
        /// Who this process is, stored in the lease row: `host:pid:random`. A lease whose owner
        /// has this host's name and the id of a process that no longer exists is taken over at once.
        public var owner: String =
            "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier):\(UUID().uuidString.prefix(8))"

        /// The defaults.
        public init() {}
    }

    private struct Held {
        var token: Int64
        var validUntil: ContinuousClock.Instant
    }
    private struct State {
        var held: [String: Held] = [:]
        var renewing = true
    }

    /// The database holding the lease rows (the store's file).
    package let database: any DatabaseWriter
    /// The settings.
    package let configuration: Configuration
    private let state = Mutex(State())

    /// Elects leaders through the lease rows of `database`, creating the pipeline tables if needed.
    public init(database: any DatabaseWriter, configuration: Configuration = Configuration()) throws {
        self.database = database
        self.configuration = configuration
        try PipelineSchema.install(database)
    }

    public func acquire(_ subscription: String) async throws -> Int64 {
        while true {
            try Task.checkCancellation()
            // A lease this election holds is not taken again until released (or lost).
            let heldHere = state.withLock { s -> Bool in
                guard let held = s.held[subscription] else { return false }
                if held.validUntil <= .now {
                    s.held[subscription] = nil
                    return false
                }
                return true
            }
            if !heldHere {
                let started = ContinuousClock.now
                if let token = try await take(subscription) {
                    state.withLock { s in
                        s.held[subscription] = Held(token: token, validUntil: started + configuration.leaseDuration)
                    }
                    return token
                }
            }
            try await Task.sleep(for: configuration.retryInterval)
        }
    }

    public func isLeader(_ subscription: String, token: Int64) async -> Bool {
        state.withLock { s in
            guard let held = s.held[subscription], held.token == token else { return false }
            return ContinuousClock.now < held.validUntil
        }
    }

    public func release(_ subscription: String, token: Int64) async {
        state.withLock { s in
            if s.held[subscription]?.token == token { s.held[subscription] = nil }
        }
        let owner = configuration.owner
        _ = try? await database.write { db in
            try db.execute(
                sql: "UPDATE backstage_leases SET expires_at = 0 WHERE subscription = ? AND token = ? AND owner = ?",
                arguments: [subscription, token, owner])
        }
    }

    /// Stops renewing the leases (as a frozen process would): for tests of takeover and fencing.
    func stopRenewing() {
        state.withLock { $0.renewing = false }
    }

    /// The current lease of `subscription` in `database`: token, owner, expiry (nil: none).
    package static func lease(_ subscription: String, in db: Database) throws -> (
        token: Int64, owner: String, expiresAt: Date
    )? {
        guard
            let row = try Row.fetchOne(
                db, sql: "SELECT token, owner, expires_at FROM backstage_leases WHERE subscription = ?",
                arguments: [subscription])
        else { return nil }
        return (row["token"], row["owner"], Date(timeIntervalSince1970: row["expires_at"]))
    }

    /// Takes the lease if it is free; returns the new token, or nil when another process holds it.
    private func take(_ subscription: String) async throws -> Int64? {
        let owner = configuration.owner
        let duration = configuration.leaseDuration
        return try await database.writeWithoutTransaction { db in
            var token: Int64?
            try db.inTransaction(.immediate) {
                let now = Date()
                if let current = try Self.lease(subscription, in: db), current.expiresAt > now,
                    !Self.isDeadLocalProcess(current.owner)
                {
                    return .commit
                }
                let leased = try Int64.fetchOne(
                    db, sql: "SELECT token FROM backstage_leases WHERE subscription = ?", arguments: [subscription])
                let checkpointed = try Int64.fetchOne(
                    db, sql: "SELECT token FROM backstage_checkpoints WHERE subscription = ?", arguments: [subscription]
                )
                let next = max(leased ?? 0, checkpointed ?? 0) + 1
                let nowSeconds = now.timeIntervalSince1970
                try db.execute(
                    sql: """
                        INSERT INTO backstage_leases (subscription, token, owner, acquired_at, expires_at)
                        VALUES (?, ?, ?, ?, ?)
                        ON CONFLICT (subscription) DO UPDATE SET token = excluded.token, owner = excluded.owner,
                            acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
                        """,
                    arguments: [subscription, next, owner, nowSeconds, nowSeconds + duration.seconds])
                token = next
                return .commit
            }
            return token
        }
    }

    /// Renews every held lease each heartbeat interval until cancelled. Several concurrent runs
    /// (two services over one store) only renew twice.
    public func run() async throws {
        while true {
            try await Task.sleep(for: configuration.heartbeatInterval)
            let snapshot = state.withLock { s -> [String: Held] in
                s.held = s.held.filter { $0.value.validUntil > .now }
                return s.renewing ? s.held : [:]
            }
            if snapshot.isEmpty { continue }
            let started = ContinuousClock.now
            let owner = configuration.owner
            let duration = configuration.leaseDuration
            let lost = try? await database.write { db -> Set<String> in
                var lost = Set<String>()
                let expiry = Date().timeIntervalSince1970 + duration.seconds
                for (subscription, held) in snapshot {
                    try db.execute(
                        sql: """
                            UPDATE backstage_leases SET expires_at = ?
                            WHERE subscription = ? AND token = ? AND owner = ? AND expires_at > 0
                            """, arguments: [expiry, subscription, held.token, owner])
                    if db.changesCount == 0 { lost.insert(subscription) }
                }
                return lost
            }
            guard let lost else { continue }  // not renewed: the leases run out on their own
            state.withLock { s in
                for (subscription, held) in snapshot where s.held[subscription]?.token == held.token {
                    if lost.contains(subscription) {
                        s.held[subscription] = nil
                    } else {
                        s.held[subscription]?.validUntil = started + duration
                    }
                }
            }
        }
    }

    /// Whether `owner` names a process of this host that no longer exists.
    static func isDeadLocalProcess(_ owner: String) -> Bool {
        let parts = owner.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count >= 3, String(parts[parts.count - 3]) == ProcessInfo.processInfo.hostName,
            let pid = Int32(parts[parts.count - 2]), pid > 0
        else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }
}

extension Duration {
    /// The duration in seconds, as a floating-point number.
    fileprivate var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }
}
