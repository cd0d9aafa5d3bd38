import Backstage
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// One active consumer per subscription across processes: a session advisory lock held on a
/// dedicated connection, plus a lease row whose token grows with every takeover.
///
/// - ``acquire(_:)`` tries the lock every ``Configuration/retryInterval`` (so it never holds a
///   transaction open, and never holds back the log's read horizon); once it has it, it increments
///   the lease row's token and returns it: the fencing token.
/// - While leading, the connection runs a heartbeat every ``Configuration/heartbeatInterval``.
///   When the connection is lost (process death, network, `pg_terminate_backend`) the server
///   releases the lock at once, another process takes it within a retry interval, and this one
///   notices at its next heartbeat: ``isLeader(_:token:)`` turns false.
/// - ``PostgresCheckpointStore`` rejects a commit whose token is older than the lease row's, so a
///   process that lost the lease cannot move a checkpoint, even before it notices.
///
/// Locks are keyed by (hash of the schema, hash of the subscription); two subscriptions whose
/// names collide on a 32-bit hash would only take turns, never run together.
public final class PostgresLeadership: LeaderElection {
    /// Settings of the election.
    public struct Configuration: Sendable {
        /// How often a candidate tries the lock.
        public var retryInterval: Duration = .milliseconds(500)
        /// How often the leader checks its connection.
        public var heartbeatInterval: Duration = .seconds(1)
        /// Who this process is, stored in the lease row (for operators).
        public var owner: String = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)"

        /// The defaults.
        public init() {}
    }

    private final class Lease: Sendable {
        let subscription: String
        let state = Mutex<(token: Int64?, lost: Bool, releasing: Bool)>((nil, false, false))
        let acquired = AsyncStream<Result<Int64, any Error>>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let task = Mutex<Task<Void, Never>?>(nil)
        init(subscription: String) { self.subscription = subscription }
    }

    /// The store whose schema holds the lease rows.
    public let store: PostgresEventStore
    /// The settings.
    public let configuration: Configuration
    private let leases = Mutex<[String: Lease]>([:])
    private let logger: Logger

    /// Elects leaders through `store`'s connection pool and schema.
    public init(store: PostgresEventStore, configuration: Configuration = Configuration()) {
        self.store = store
        self.configuration = configuration
        self.logger = store.logger
    }

    public func acquire(_ subscription: String) async throws -> Int64 {
        let lease = Lease(subscription: subscription)
        let previous = leases.withLock { all -> Lease? in
            defer { all[subscription] = lease }
            return all[subscription]
        }
        if let previous { await finish(previous) }
        let task = Task { await self.hold(lease) }
        lease.task.withLock { $0 = task }
        return try await withTaskCancellationHandler {
            for await outcome in lease.acquired.0 { return try outcome.get() }
            throw CancellationError()
        } onCancel: {
            lease.state.withLock { $0.releasing = true }
        }
    }

    public func isLeader(_ subscription: String, token: Int64) async -> Bool {
        guard let lease = leases.withLock({ $0[subscription] }) else { return false }
        let s = lease.state.withLock { $0 }
        return s.token == token && !s.lost
    }

    public func release(_ subscription: String, token: Int64) async {
        let lease = leases.withLock { all -> Lease? in
            guard let lease = all[subscription], lease.state.withLock({ $0.token == token }) else { return nil }
            all[subscription] = nil
            return lease
        }
        if let lease { await finish(lease) }
    }

    /// Releases every lease this process holds or waits for.
    public func releaseAll() async {
        let all = leases.withLock { all -> [Lease] in
            defer { all = [:] }
            return Array(all.values)
        }
        for lease in all { await finish(lease) }
    }

    private func finish(_ lease: Lease) async {
        lease.state.withLock { $0.releasing = true }
        let task = lease.task.withLock { $0 }
        await task?.value
    }

    /// Runs `SELECT 1` on the lease connection; a connection that does not answer within
    /// `timeout` is closed and counts as lost (a query on a connection the server has closed
    /// may otherwise never complete).
    private static func heartbeat(_ conn: PostgresConnection, timeout: Duration, logger: Logger) async throws {
        let answered = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let once = Mutex<CheckedContinuation<Bool, Never>?>(continuation)
            let finish = { @Sendable (value: Bool) in
                once.withLock { c in
                    c?.resume(returning: value)
                    c = nil
                }
            }
            // Unstructured on purpose: a query that never completes must not block the caller.
            Task {
                let ok = (try? await conn.query("SELECT 1", logger: logger)) != nil
                finish(ok)
            }
            Task {
                try? await Task.sleep(for: timeout)
                finish(false)
            }
        }
        if !answered {
            try? await conn.close()
            throw PostgresStoreError.database(sqlState: "connection", message: "lease heartbeat failed or timed out")
        }
    }

    /// The advisory lock keys of a subscription.
    private func keys(_ subscription: String) -> (String, String) {
        ("backstage.lease.\(store.schema.rawValue)", subscription)
    }

    /// Holds one pooled connection: tries the lock until it has it, bumps the token, then keeps
    /// the connection alive with heartbeats until released or lost.
    private func hold(_ lease: Lease) async {
        let (classKey, objectKey) = keys(lease.subscription)
        let s = store.s
        let log = store.queryLogger
        var announced = false
        do {
            try await store.client.withConnection { conn in
                _ = try await conn.query(
                    "SELECT set_config('application_name', \("backstage-lease:\(s):\(lease.subscription)"), false)",
                    logger: log)
                // Candidate: try the lock until it is ours or we are told to stop.
                while true {
                    if lease.state.withLock({ $0.releasing }) { throw CancellationError() }
                    let rows = try await conn.query(
                        "SELECT pg_try_advisory_lock(hashtext(\(classKey)), hashtext(\(objectKey)))", logger: log)
                    var locked = false
                    for try await got in rows.decode(Bool.self) { locked = got }
                    if locked { break }
                    try? await Task.sleep(for: configuration.retryInterval)
                }
                // Leader: the next token.
                let rows = try await conn.query(
                    """
                    INSERT INTO \(unescaped: s).leases AS l (subscription, token, owner)
                    VALUES (\(lease.subscription), 1, \(configuration.owner))
                    ON CONFLICT (subscription) DO UPDATE
                    SET token = l.token + 1, owner = excluded.owner, acquired_at = now()
                    RETURNING token
                    """, logger: log)
                var token: Int64?
                for try await t in rows.decode(Int64.self) { token = t }
                guard let token else { throw PostgresStoreError.unexpectedResult("no lease token") }
                lease.state.withLock { $0.token = token }
                lease.acquired.1.yield(.success(token))
                announced = true
                logger.info(
                    "leading subscription", metadata: ["subscription": "\(lease.subscription)", "token": "\(token)"])
                // Heartbeats until released; a failed one means the lock may be gone.
                var lastBeat = ContinuousClock.now
                while !lease.state.withLock({ $0.releasing }) {
                    try? await Task.sleep(for: .milliseconds(50))
                    if conn.isClosed { throw PostgresStoreError.database(sqlState: "connection", message: "lease connection closed") }
                    if ContinuousClock.now - lastBeat >= configuration.heartbeatInterval {
                        try await Self.heartbeat(conn, timeout: configuration.heartbeatInterval * 3, logger: log)
                        lastBeat = ContinuousClock.now
                    }
                }
                _ = try await conn.query(
                    "SELECT pg_advisory_unlock(hashtext(\(classKey)), hashtext(\(objectKey)))", logger: log)
                _ = try? await conn.query("RESET application_name", logger: log)
            }
        } catch {
            if !(error is CancellationError) {
                let reason = (error as? PSQLError).map { "\(PostgresEventStore.translate($0))" } ?? "\(error)"
                logger.warning(
                    "lease connection lost", metadata: ["subscription": "\(lease.subscription)", "error": "\(reason)"])
            }
            if !announced { lease.acquired.1.yield(.failure(error)) }
        }
        lease.state.withLock { $0.lost = true }
        lease.acquired.1.finish()
    }
}
