import Backstage
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// One active consumer per subscription across processes: a session advisory lock per
/// subscription, plus a lease row whose token grows with every takeover.
///
/// All the leases of a process, held or waited for, live on **one** connection, whatever the
/// number of subscriptions. ``run()`` (which `PipelineService` runs for its lifetime) takes it
/// from the store's pool for as long as it runs, and on it:
///
/// - every ``Configuration/retryInterval`` (and at once when a new candidate arrives) tries the
///   locks of every waiting candidate in one statement, bumps the lease rows' tokens of those it
///   got in another, and hands each waiting ``acquire(_:)`` its token: the fencing token. It never
///   holds a transaction open, so it never holds back the log's read horizon.
/// - unlocks released leases, and sends a heartbeat every ``Configuration/heartbeatInterval``.
///
/// When the connection is lost (process death, network, `pg_terminate_backend`) the server
/// releases every lock at once and other processes take them within a retry interval; this one
/// notices within a heartbeat: ``isLeader(_:token:)`` turns false for all its leases together.
/// The connection is closed (never given back to the pool while it may hold a lock: the same
/// happens when any statement on it fails or takes longer than three heartbeat intervals), and
/// ``run()`` connects again after a backoff; waiting candidates keep waiting, and former leaders
/// become candidates again by calling ``acquire(_:)``.
///
/// The checkpoint store rejects a commit whose token is older than the lease row's, so a
/// process that lost the lease cannot move a checkpoint, even before it notices.
///
/// ``acquire(_:)`` waits until ``run()`` runs and the lock is free; it ends with
/// `CancellationError` at once when its task is cancelled, and when ``run()`` ends. Cancelling
/// ``run()`` unlocks every lease and returns the connection to the pool.
///
/// Locks are keyed by (hash of the schema, hash of the subscription); two subscriptions whose
/// names collide on a 32-bit hash would only take turns, never run together.
public final class PostgresLeadership: LeaderElection {
    /// Settings of the election.
    public struct Configuration: Sendable {
        /// How often candidates try their locks; also the first delay before reconnecting a lost
        /// lease connection (it doubles up to 2 seconds).
        public var retryInterval: Duration = .milliseconds(500)
        /// How often the lease connection is checked; a statement that takes three intervals
        /// counts as a lost connection.
        public var heartbeatInterval: Duration = .seconds(1)
        /// Who this process is, stored in the lease rows (for operators).
        public var owner: String = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)"
        /// How long a partition's lease lasts without renewal (partitions are leased by time, not
        /// by lock: see ``PostgresLeadership/acquire(partition:of:subscription:)``). Renewed every
        /// ``heartbeatInterval``, which should be well below it; a process that does not renew in
        /// time (dead, paused, cut off) loses its partitions to the live ones, and notices itself
        /// by its own clock.
        public var partitionLease: Duration = .seconds(10)

        /// The defaults.
        public init() {}
    }

    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Int64, any Error>
    }

    private struct State {
        /// Candidates by subscription (one per subscription: a newer acquire replaces an older one).
        var waiters: [String: Waiter] = [:]
        /// Leases held on the current connection, with their tokens.
        var held: [String: Int64] = [:]
        /// Locks to give up on the current connection, and who waits for that.
        var unlocks: [String] = []
        var unlocked: [CheckedContinuation<Void, Never>] = []
        /// A new candidate or release arrived: act before the next retry interval.
        var pending = false
        var running = false
        var connected = false
        var nextID: UInt64 = 0
        /// Partition candidates, by partition id.
        var partitionWaiters: [String: PartitionWaiter] = [:]
        /// Partitions held, by partition id.
        var partitionHeld: [String: PartitionLease] = [:]
        /// Partition leases to give back in the database (id, token).
        var partitionReleases: [(String, Int64)] = []
        var partitionPending = false
    }

    private struct PartitionWaiter {
        var id: UInt64
        var group: String
        var partition: Int
        var count: Int
        var continuation: CheckedContinuation<Int64, any Error>
    }

    private struct PartitionLease {
        var token: Int64
        var group: String
        var partition: Int
        var count: Int
        /// By this process's clock: the lease is not used past it unless renewed.
        var validUntil: ContinuousClock.Instant
        /// A partition taken beyond this process's share because it was left without an owner:
        /// not given back to rebalance before this instant (giving it back at once would leave it
        /// without an owner again).
        var keepUntil: ContinuousClock.Instant? = nil
    }

    /// The store whose pool lends the lease connection and whose schema holds the lease rows.
    package let store: PostgresEventStore
    /// The settings.
    package let configuration: Configuration
    private let state = Mutex(State())
    private let logger: Logger
    /// This election's name among the members of partitioned subscriptions (and in their lease rows).
    let member: String
    private var classKey: String { "backstage.lease.\(store.schema.rawValue)" }
    private var applicationName: String { "backstage-lease:\(store.schema.rawValue)" }

    /// Elects leaders through `store`'s connection pool and schema. Nothing happens until
    /// ``run()`` runs.
    public init(store: PostgresEventStore, configuration: Configuration = Configuration()) {
        self.store = store
        self.configuration = configuration
        self.logger = store.logger
        self.member = "\(configuration.owner)/\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Waits until this process leads `subscription` (which needs ``run()`` to be running), and
    /// returns the lease's fencing token. A second call for the same subscription replaces the
    /// first: its wait ends with `CancellationError`, its lease is given up.
    ///
    /// - Throws: `CancellationError` when the task is cancelled or ``run()`` ends.
    public func acquire(_ subscription: String) async throws -> Int64 {
        try await waitForLease { s, id, continuation in
            let previous = s.waiters[subscription]?.continuation
            s.waiters[subscription] = Waiter(id: id, continuation: continuation)
            if s.held.removeValue(forKey: subscription) != nil { s.unlocks.append(subscription) }
            s.pending = true
            return previous
        } dequeue: { s, id in
            guard s.waiters[subscription]?.id == id else { return nil }
            return s.waiters.removeValue(forKey: subscription)?.continuation
        }
    }

    /// Waits for a lease's token: `enqueue` registers the continuation of waiter `id` (a fresh
    /// id) in the state, and returns the continuation of the waiter it replaces, which ends with
    /// `CancellationError`; when the task is cancelled, `dequeue` removes waiter `id` if it is
    /// still there, and returns its continuation.
    private func waitForLease(
        enqueue: (inout State, UInt64, CheckedContinuation<Int64, any Error>) -> CheckedContinuation<Int64, any Error>?,
        dequeue: @escaping @Sendable (inout State, UInt64) -> CheckedContinuation<Int64, any Error>?
    ) async throws -> Int64 {
        let id = state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int64, any Error>) in
                let replaced = state.withLock { s -> CheckedContinuation<Int64, any Error>? in
                    if Task.isCancelled { return continuation }
                    return enqueue(&s, id, continuation)
                }
                replaced?.resume(throwing: CancellationError())
            }
        } onCancel: {
            state.withLock { s in dequeue(&s, id) }?.resume(throwing: CancellationError())
        }
    }

    /// Whether the lease with `token` is held: false as soon as the lease connection is known lost.
    /// A partition's lease: false once it was not renewed within ``Configuration/partitionLease``
    /// by this process's clock, or was given back to rebalance.
    public func isLeader(_ subscription: String, token: Int64) async -> Bool {
        state.withLock { s in
            if let lease = s.partitionHeld[subscription] {
                return lease.token == token && ContinuousClock.now < lease.validUntil
            }
            return s.held[subscription] == token
        }
    }

    /// This election's view of its partitions, for diagnostics: the partitions it holds (token,
    /// milliseconds of validity left by its own clock) and those it waits for.
    package func partitionView() -> String {
        state.withLock { s in
            let now = ContinuousClock.now
            let held = s.partitionHeld.sorted { $0.key < $1.key }.map { id, lease in
                let left = now.duration(to: lease.validUntil)
                return "\(id):t\(lease.token):\(Self.nanoseconds(left) / 1_000_000)ms"
            }
            let waiting = s.partitionWaiters.keys.sorted()
            return "member=\(member) connected=\(s.connected) held=[\(held.joined(separator: ","))] "
                + "waiting=[\(waiting.joined(separator: ","))]"
        }
    }

    /// Waits until this process owns partition `partition` of `count` of `base` and returns its
    /// fencing token.
    ///
    /// Partitions are leased by time, not by advisory lock (a lock survives a paused process,
    /// whose connection stays open): lease rows with an expiry, renewed by ``run()`` every
    /// heartbeat. The processes running `base` register as its members (a row each, renewed
    /// likewise, deleted when ``run()`` is cancelled); each takes its fair share of the partitions
    /// (members ranked by name, the first `count % members` take one more), gives back what
    /// exceeds it, and takes free or expired partitions up to it. A takeover increments the
    /// lease row's token, and the checkpoint store refuses a commit whose token is older
    /// than the row's, so a process that lost a partition cannot write for it. A partition left
    /// without an owner for a whole lease (its member at its share does not wait for it) is taken
    /// by a member that waits for it, beyond its share.
    ///
    /// - Throws: `CancellationError` when the task is cancelled or ``run()`` ends.
    public func acquire(partition: Int, of count: Int, subscription base: String) async throws -> Int64 {
        let id = partitionSubscription(base, partition: partition, of: count)
        return try await waitForLease { s, waiterID, continuation in
            let previous = s.partitionWaiters[id]?.continuation
            s.partitionWaiters[id] = PartitionWaiter(
                id: waiterID, group: base, partition: partition, count: count, continuation: continuation)
            if let lease = s.partitionHeld.removeValue(forKey: id) {
                s.partitionReleases.append((id, lease.token))
            }
            s.partitionPending = true
            return previous
        } dequeue: { s, waiterID in
            guard s.partitionWaiters[id]?.id == waiterID else { return nil }
            return s.partitionWaiters.removeValue(forKey: id)?.continuation
        }
    }

    /// Who holds the unexpired leases of `subscriptions`: the lease rows' owners (for partitions,
    /// the member name: ``Configuration/owner`` and a suffix per election).
    public func owners(_ subscriptions: [String]) async throws -> [String: String] {
        let s = store.s
        return try await store.run { conn in
            let rows = try await conn.query(
                """
                SELECT subscription, owner FROM \(unescaped: s).leases
                WHERE subscription = ANY(\(subscriptions)::text[]) AND (expires_at IS NULL OR expires_at > now())
                """, logger: self.store.queryLogger)
            var owners: [String: String] = [:]
            for try await (subscription, owner) in rows.decode((String, String).self) { owners[subscription] = owner }
            return owners
        }
    }

    /// Gives the lease up and waits until the lock is released (or the connection holding it is
    /// gone). A partition's lease is given back at the next heartbeat (or expires).
    public func release(_ subscription: String, token: Int64) async {
        let partition = state.withLock { s -> Bool in
            guard let lease = s.partitionHeld[subscription] else { return false }
            if lease.token == token {
                s.partitionHeld[subscription] = nil
                s.partitionReleases.append((subscription, token))
                s.partitionPending = true
            }
            return true
        }
        if partition { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let queued = state.withLock { s -> Bool in
                guard s.held[subscription] == token else { return false }
                s.held[subscription] = nil
                s.unlocks.append(subscription)
                s.unlocked.append(continuation)
                s.pending = true
                return true
            }
            if !queued { continuation.resume() }
        }
    }

    /// Runs the lease connection until cancelled: tries the locks of waiting candidates, unlocks
    /// released leases, sends heartbeats, and connects again when the connection is lost.
    /// When cancelled, it unlocks every lease, ends every waiting ``acquire(_:)`` with
    /// `CancellationError`, and returns.
    ///
    /// - Throws: ``PostgresStoreError/unexpectedResult(_:)`` when it is already running,
    ///   ``PostgresStoreError/closed`` when the store stopped before it was ready.
    public func run() async throws {
        let started = state.withLock { s -> Bool in
            guard !s.running else { return false }
            s.running = true
            return true
        }
        guard started else { throw PostgresStoreError.unexpectedResult("PostgresLeadership.run() is already running") }
        defer { end() }
        // The lease rows live in the store's schema: wait until its run() has migrated it.
        do { try await store.waitUntilReady() } catch is CancellationError { return }
        let longest = max(configuration.retryInterval, .seconds(2))
        var delay = configuration.retryInterval
        while !Task.isCancelled {
            do {
                try await store.client.withConnection { conn in
                    do {
                        try await keep(conn)
                    } catch {
                        // It may hold locks: it must not go back to the pool.
                        try? await conn.close()
                        throw error
                    }
                }
            } catch {
                if !Task.isCancelled {
                    let reason = (error as? PSQLError).map { "\(PostgresEventStore.translate($0))" } ?? "\(error)"
                    logger.warning(
                        "lease connection lost; reconnecting",
                        metadata: ["schema": "\(store.schema.rawValue)", "error": "\(reason)", "retryIn": "\(delay)"])
                }
            }
            let wasConnected = lose()
            if Task.isCancelled { break }
            if wasConnected { delay = configuration.retryInterval }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, longest)
        }
    }

    /// Serves the leases on `conn` until cancelled (then unlocks everything and returns) or
    /// until the connection fails (throws).
    private func keep(_ conn: PostgresConnection) async throws {
        let log = store.queryLogger
        try await timed(conn) {
            _ = try await conn.query("SELECT set_config('application_name', \(applicationName), false)", logger: log)
        }
        // Best effort (PostgreSQL 14 and later, on Linux): a statement still running at the server
        // when the connection is closed (after a timeout) ends within a heartbeat, and the locks
        // of the session with it, instead of when the statement would have ended.
        let check = "\(max(1, Self.nanoseconds(configuration.heartbeatInterval) / 1_000_000))"
        _ = try? await timed(conn) {
            try await conn.query("SELECT set_config('client_connection_check_interval', \(check), false)", logger: log)
        }
        state.withLock { $0.connected = true }
        let tick = min(configuration.retryInterval, configuration.heartbeatInterval, .milliseconds(50))
        var nextTry = ContinuousClock.now
        var nextBeat = ContinuousClock.now + configuration.heartbeatInterval
        var nextBalance = ContinuousClock.now
        while !Task.isCancelled {
            if conn.isClosed {
                throw PostgresStoreError.database(sqlState: "connection", message: "lease connection closed")
            }
            let (unlocks, unlocked, candidates, pending) = state.withLock { s in
                defer {
                    s.unlocks = []
                    s.unlocked = []
                    s.pending = false
                }
                return (s.unlocks, s.unlocked, s.waiters.keys.filter { s.held[$0] == nil }, s.pending)
            }
            if !unlocks.isEmpty {
                // On failure the connection is closed: the locks go with it.
                defer { for c in unlocked { c.resume() } }
                try await timed(conn) {
                    _ = try await conn.query(
                        "SELECT pg_advisory_unlock(hashtext(\(classKey)), hashtext(x)) FROM unnest(\(unlocks)::text[]) x",
                        logger: log)
                }
            } else {
                for c in unlocked { c.resume() }
            }
            if !candidates.isEmpty, pending || ContinuousClock.now >= nextTry {
                try await lead(candidates, on: conn)
                nextTry = ContinuousClock.now + configuration.retryInterval
                nextBeat = ContinuousClock.now + configuration.heartbeatInterval
            }
            if ContinuousClock.now >= nextBeat {
                try await timed(conn) { _ = try await conn.query("SELECT 1", logger: log) }
                nextBeat = ContinuousClock.now + configuration.heartbeatInterval
            }
            let partitionsDue = state.withLock { s -> Bool in
                defer { s.partitionPending = false }
                return s.partitionPending
            }
            if partitionsDue || ContinuousClock.now >= nextBalance {
                try await balancePartitions(on: conn)
                nextBalance = ContinuousClock.now + configuration.heartbeatInterval
            }
            try? await Task.sleep(for: tick)
        }
        // Cancelled: give every lock up and the connection back in a clean state.
        let (partitions, groups) = state.withLock { s in
            s.held = [:]
            s.connected = false
            let partitions = s.partitionHeld.map { ($0.key, $0.value.token) } + s.partitionReleases
            let groups = Set(s.partitionHeld.values.map(\.group) + s.partitionWaiters.values.map(\.group))
            s.partitionHeld = [:]
            s.partitionReleases = []
            return (partitions, Array(groups))
        }
        // Leave the partitioned subscriptions at once: the others rebalance at their next heartbeat.
        if !partitions.isEmpty || !groups.isEmpty {
            try await timed(conn) {
                try await giveBack(partitions, on: conn)
                _ = try await conn.query(
                    """
                    DELETE FROM \(unescaped: store.s).members
                    WHERE subscription = ANY(\(groups)::text[]) AND member = \(member)
                    """, logger: log)
            }
        }
        try await timed(conn) {
            _ = try await conn.query("SELECT pg_advisory_unlock_all()", logger: log)
            _ = try await conn.query("RESET ALL", logger: log)
        }
    }

    /// Tries the locks of `candidates` in one statement, bumps the tokens of those obtained in
    /// another, and hands each its waiter.
    private func lead(_ candidates: [String], on conn: PostgresConnection) async throws {
        let log = store.queryLogger
        let got = try await timed(conn) {
            let rows = try await conn.query(
                """
                SELECT x FROM unnest(\(candidates)::text[]) x
                WHERE pg_try_advisory_lock(hashtext(\(classKey)), hashtext(x))
                """, logger: log)
            var got: [String] = []
            for try await x in rows.decode(String.self) { got.append(x) }
            return got
        }
        guard !got.isEmpty else { return }
        let s = store.s
        let tokens = try await timed(conn) {
            let rows = try await conn.query(
                """
                INSERT INTO \(unescaped: s).leases AS l (subscription, token, owner)
                SELECT x, 1, \(configuration.owner) FROM unnest(\(got)::text[]) x
                ON CONFLICT (subscription) DO UPDATE
                SET token = l.token + 1, owner = excluded.owner, acquired_at = now()
                RETURNING subscription, token
                """, logger: log)
            var tokens: [(String, Int64)] = []
            for try await row in rows.decode((String, Int64).self) { tokens.append(row) }
            return tokens
        }
        guard tokens.count == got.count else { throw PostgresStoreError.unexpectedResult("no lease token") }
        let handed = state.withLock { s -> [(String, Waiter, Int64)] in
            var handed: [(String, Waiter, Int64)] = []
            for (subscription, token) in tokens {
                if let waiter = s.waiters.removeValue(forKey: subscription) {
                    s.held[subscription] = token
                    handed.append((subscription, waiter, token))
                } else {
                    // The candidate left meanwhile.
                    s.unlocks.append(subscription)
                    s.pending = true
                }
            }
            return handed
        }
        for (subscription, waiter, token) in handed {
            logger.info("leading subscription", metadata: ["subscription": "\(subscription)", "token": "\(token)"])
            waiter.continuation.resume(returning: token)
        }
    }

    // MARK: Partitions

    /// Marks partition leases given back in the database: free for the next owner at once (their
    /// expiry is now, so how long a partition has been without an owner can be told).
    private func giveBack(_ leases: [(String, Int64)], on conn: PostgresConnection) async throws {
        guard !leases.isEmpty else { return }
        _ = try await conn.query(
            """
            UPDATE \(unescaped: store.s).leases l SET expires_at = now()
            FROM unnest(\(leases.map(\.0))::text[], \(leases.map(\.1))::bigint[]) AS r(subscription, token)
            WHERE l.subscription = r.subscription AND l.token = r.token
            """, logger: store.queryLogger)
    }

    /// One heartbeat of the partitioned subscriptions: gives back released leases, renews held
    /// ones (those that cannot be renewed are lost), renews this process's membership, then per
    /// subscription gives back what exceeds its fair share and takes free or expired partitions
    /// up to it, handing their tokens to the waiting ``acquire(partition:of:subscription:)``; at its
    /// share, it still takes a partition it waits for that had no owner for a whole lease.
    private func balancePartitions(on conn: PostgresConnection) async throws {
        let log = store.queryLogger
        let s = store.s
        let leaseSeconds = Double(Self.nanoseconds(configuration.partitionLease)) / 1e9
        let (releases, held, groups) = state.withLock { st in
            defer { st.partitionReleases = [] }
            var groups: [String: Int] = [:]
            for w in st.partitionWaiters.values { groups[w.group] = w.count }
            for l in st.partitionHeld.values { groups[l.group] = l.count }
            return (st.partitionReleases, st.partitionHeld.map { ($0.key, $0.value.token) }, groups)
        }
        guard !releases.isEmpty || !groups.isEmpty else { return }
        try await timed(conn) { try await giveBack(releases, on: conn) }
        guard !groups.isEmpty else { return }

        // Renew what is held; what cannot be renewed (expired, taken over) is lost.
        let renewStarted = ContinuousClock.now
        if !held.isEmpty {
            let renewed = try await timed(conn) {
                let rows = try await conn.query(
                    """
                    UPDATE \(unescaped: s).leases l SET expires_at = now() + make_interval(secs => \(leaseSeconds))
                    FROM unnest(\(held.map(\.0))::text[], \(held.map(\.1))::bigint[]) AS h(subscription, token)
                    WHERE l.subscription = h.subscription AND l.token = h.token AND l.expires_at > now()
                    RETURNING l.subscription
                    """, logger: log)
                var renewed = Set<String>()
                for try await id in rows.decode(String.self) { renewed.insert(id) }
                return renewed
            }
            let lost = state.withLock { st -> [String] in
                var lost: [String] = []
                for (id, token) in held where st.partitionHeld[id]?.token == token {
                    if renewed.contains(id) {
                        st.partitionHeld[id]?.validUntil = renewStarted + configuration.partitionLease
                    } else {
                        st.partitionHeld[id] = nil
                        lost.append(id)
                    }
                }
                return lost
            }
            for id in lost {
                logger.warning(
                    "partition lease lost: not renewed in time",
                    metadata: ["subscription": "\(id)", "member": "\(member)"])
            }
        }

        // Membership: renew this process's rows and read the live members.
        let groupNames = groups.keys.sorted()
        let members = try await timed(conn) {
            _ = try await conn.query(
                """
                INSERT INTO \(unescaped: s).members AS m (subscription, member, expires_at)
                SELECT g, \(member), now() + make_interval(secs => \(leaseSeconds)) FROM unnest(\(groupNames)::text[]) g
                ON CONFLICT (subscription, member) DO UPDATE SET expires_at = excluded.expires_at
                """, logger: log)
            let rows = try await conn.query(
                """
                SELECT subscription, member FROM \(unescaped: s).members
                WHERE subscription = ANY(\(groupNames)::text[]) AND expires_at > now()
                ORDER BY subscription, member
                """, logger: log)
            var members: [String: [String]] = [:]
            for try await (group, m) in rows.decode((String, String).self) { members[group, default: []].append(m) }
            return members
        }

        for group in groupNames {
            guard let count = groups[group] else { continue }
            var live = members[group] ?? []
            if !live.contains(member) { live.append(member) }
            live.sort()
            let rank = live.firstIndex(of: member) ?? 0
            let target = count / live.count + (rank < count % live.count ? 1 : 0)
            try await share(group: group, target: target, on: conn)
        }
    }

    /// Brings this process's partitions of `group` to `target`: gives back the highest ones
    /// above it, takes free or expired ones below it.
    ///
    /// At its share, it still takes one partition it waits for that has had no owner for a whole
    /// lease (``Configuration/partitionLease``) and keeps it for a few leases: the member whose
    /// share includes it should have taken it long before, but may not be waiting for it (its
    /// subscription stuck, for example after the process was paused), and the fair shares alone
    /// would then leave that partition without an owner for good.
    private func share(group: String, target: Int, on conn: PostgresConnection) async throws {
        let s = store.s
        let log = store.queryLogger
        let now = ContinuousClock.now
        let (extra, wanted, held) = state.withLock { st -> ([(String, Int64)], [String], Int) in
            let mine = st.partitionHeld.filter { $0.value.group == group }
                .sorted { $0.value.partition > $1.value.partition }
            var extra: [(String, Int64)] = []
            if mine.count > target {
                let givable = mine.filter { $0.value.keepUntil.map { now >= $0 } ?? true }
                for (id, lease) in givable.prefix(mine.count - target) {
                    st.partitionHeld[id] = nil
                    extra.append((id, lease.token))
                }
            }
            let wanted = st.partitionWaiters.values.filter { $0.group == group }.sorted { $0.partition < $1.partition }
                .map { partitionSubscription(group, partition: $0.partition, of: $0.count) }
            return (extra, wanted, mine.count)
        }
        if !extra.isEmpty {
            try await timed(conn) { try await giveBack(extra, on: conn) }
            logger.info(
                "gave partitions back to rebalance",
                metadata: ["subscriptions": "\(extra.map(\.0))", "member": "\(member)", "share": "\(target)"])
            return
        }
        guard !wanted.isEmpty else { return }
        // Below its share: free or expired partitions. At it (or above, keeping rescued ones):
        // one partition left without an owner for a whole lease.
        let rescue = held >= target
        let room = rescue ? 1 : target - held
        let leaseSeconds = Double(Self.nanoseconds(configuration.partitionLease)) / 1e9
        let orphanedFor = rescue ? leaseSeconds : 0
        let started = ContinuousClock.now
        let taken = try await timed(conn) {
            let free = try await conn.query(
                """
                SELECT w.x FROM unnest(\(wanted)::text[]) WITH ORDINALITY AS w(x, n)
                LEFT JOIN \(unescaped: s).leases l ON l.subscription = w.x
                WHERE CASE WHEN \(rescue) THEN l.expires_at < now() - make_interval(secs => \(orphanedFor))
                      ELSE l.subscription IS NULL OR l.expires_at IS NULL OR l.expires_at < now() END
                ORDER BY w.n LIMIT \(room)
                """, logger: log)
            var candidates: [String] = []
            for try await x in free.decode(String.self) { candidates.append(x) }
            guard !candidates.isEmpty else { return [(String, Int64)]() }
            let rows = try await conn.query(
                """
                INSERT INTO \(unescaped: s).leases AS l (subscription, token, owner, expires_at)
                SELECT x, 1, \(member), now() + make_interval(secs => \(leaseSeconds))
                FROM unnest(\(candidates)::text[]) x
                ON CONFLICT (subscription) DO UPDATE
                SET token = l.token + 1, owner = excluded.owner, acquired_at = now(), expires_at = excluded.expires_at
                WHERE l.expires_at IS NULL OR l.expires_at < now()
                RETURNING subscription, token
                """, logger: log)
            var taken: [(String, Int64)] = []
            for try await row in rows.decode((String, Int64).self) { taken.append(row) }
            return taken
        }
        guard !taken.isEmpty else { return }
        let validUntil = started + configuration.partitionLease
        let (handed, orphans) = state.withLock {
            st -> ([(String, CheckedContinuation<Int64, any Error>, Int64)], [(String, Int64)]) in
            var handed: [(String, CheckedContinuation<Int64, any Error>, Int64)] = []
            var orphans: [(String, Int64)] = []
            for (id, token) in taken {
                if let waiter = st.partitionWaiters.removeValue(forKey: id) {
                    st.partitionHeld[id] = PartitionLease(
                        token: token, group: group, partition: waiter.partition, count: waiter.count,
                        validUntil: validUntil, keepUntil: rescue ? started + configuration.partitionLease * 4 : nil)
                    handed.append((id, waiter.continuation, token))
                } else {
                    orphans.append((id, token))  // the candidate left meanwhile
                }
            }
            return (handed, orphans)
        }
        // The waiters first: a failure to give the orphans back (they then expire) must not
        // leave a waiter that was handed its partition waiting for ever.
        for (id, continuation, token) in handed {
            if rescue {
                logger.warning(
                    "took over a partition left without an owner for a whole lease, beyond this member's share",
                    metadata: [
                        "subscription": "\(id)", "token": "\(token)", "member": "\(member)", "share": "\(target)",
                    ])
            } else {
                logger.info(
                    "owns partition", metadata: ["subscription": "\(id)", "token": "\(token)", "member": "\(member)"])
            }
            continuation.resume(returning: token)
        }
        if !orphans.isEmpty { try await timed(conn) { try await giveBack(orphans, on: conn) } }
    }

    /// Runs `body` on `conn`; when it takes longer than three heartbeat intervals the connection
    /// is closed, which fails the statement. (A timer of the connection's event loop, not a task:
    /// it must work in a cancelled task, where the final unlock runs.)
    private func timed<T>(_ conn: PostgresConnection, _ body: () async throws -> T) async throws -> T {
        let limit = Self.nanoseconds(configuration.heartbeatInterval * 3)
        let timer = conn.eventLoop.scheduleTask(in: .nanoseconds(limit)) { conn.close().whenComplete { _ in } }
        defer { timer.cancel() }
        return try await body()
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }

    /// The connection is gone, and every lock with it: no lease is held any more. Returns
    /// whether the connection had been set up.
    private func lose() -> Bool {
        let (wasConnected, lost, unlocked) = state.withLock { s in
            defer {
                s.held = [:]
                s.unlocks = []
                s.unlocked = []
                s.connected = false
            }
            return (s.connected, s.held.count, s.unlocked)
        }
        for c in unlocked { c.resume() }
        if lost > 0 {
            logger.warning("lost every lease", metadata: ["schema": "\(store.schema.rawValue)", "leases": "\(lost)"])
        }
        return wasConnected
    }

    /// run() ends: no lease is held, and every candidate's wait ends.
    private func end() {
        _ = lose()
        let (waiters, partitionWaiters) = state.withLock { s in
            defer {
                s.waiters = [:]
                s.partitionWaiters = [:]
                s.partitionHeld = [:]
                s.partitionReleases = []
                s.running = false
            }
            return (Array(s.waiters.values), Array(s.partitionWaiters.values))
        }
        for w in waiters { w.continuation.resume(throwing: CancellationError()) }
        for w in partitionWaiters { w.continuation.resume(throwing: CancellationError()) }
    }
}
