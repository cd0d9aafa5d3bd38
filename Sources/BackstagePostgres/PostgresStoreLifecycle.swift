import Backstage
import PostgresNIO
// `TaskLocals.gracefulShutdownManager`: the pool must not see the ServiceGroup's graceful shutdown.
@_spi(TestKit) import ServiceLifecycle

extension PostgresEventStore: Service {
    /// Runs the store: the connection pool it created (if it did), the schema migrations, then
    /// the group writers that write appends (see "Group commit" in the type's documentation) and
    /// the notification listener, until graceful shutdown, cancellation or ``close()``. On
    /// graceful shutdown and ``close()`` the queued appends are written before it returns; when
    /// it is cancelled, a group being written may fail with ``PostgresStoreError`` (its outcome
    /// is then unknown, as when the connection is lost) and queued appends fail with
    /// ``PostgresStoreError/closed``.
    /// Operations issued meanwhile wait until the schema is ready; after `run()` ends they fail
    /// with ``PostgresStoreError/closed``. While the server is unreachable the pool keeps trying
    /// to connect (postgres-nio's backoff) and operations keep waiting.
    ///
    /// - Throws: what stopped the migrations (for example ``PostgresStoreError`` for an
    ///   unreachable server or a schema restored into another cluster), or
    ///   ``PostgresStoreError/closed`` when the store already ran or was closed.
    public func run() async throws {
        guard readiness.start() else { throw PostgresStoreError.closed }
        try await withGracefulShutdownHandler {
            try await withTaskCancellationHandler {
                try await runOwnedWork()
            } onCancel: {
                readiness.close()
            }
        } onGracefulShutdown: {
            self.readiness.close()
        }
    }

    private func runOwnedWork() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            if let ownedClient {
                group.addTask {
                    // PostgresClient.run() cancels itself as soon as graceful shutdown is triggered
                    // (postgres-nio wraps it in cancelWhenGracefulShutdown), which in a
                    // ServiceGroup would shut the pool down at the moment the store's own graceful
                    // stop begins: under the group writers still writing (their appends failed
                    // with a closed connection) and the notification listener (the race described
                    // below, which left run() waiting forever). Run it outside the graceful
                    // shutdown: it stops when this group cancels it, last.
                    await TaskLocals.$gracefulShutdownManager.withValue(nil) { await ownedClient.run() }
                }
            }
            // The pool keeps trying to connect while the server is unreachable; close(),
            // cancellation or graceful shutdown end the wait.
            let prepared = await withTaskGroup(of: Result<Bool, any Error>.self) { preparing in
                preparing.addTask {
                    do {
                        try await self.prepare()
                        return .success(true)
                    } catch {
                        return .failure(error)
                    }
                }
                preparing.addTask {
                    await self.readiness.stopRequested.wait()
                    return .success(false)
                }
                let first = await preparing.next() ?? .success(false)
                preparing.cancelAll()
                return first
            }
            switch prepared {
            case .success(true):
                readiness.markReady()
            case .success(false), .failure(is CancellationError):
                readiness.close()
                group.cancelAll()
                return
            case .failure(let error):
                let reported = Self.storeError(error)
                readiness.fail(reported)
                group.cancelAll()
                throw reported
            }
            // The group writers stop first (after the groups they are writing and, on a graceful
            // stop, the queue), then the listener, which gives its connection back to a running
            // pool; only then is the pool stopped. Cancelling the listener and the pool at once
            // raced: when the pool shut down (closing the listener's connection) while the
            // listener was leasing, starting LISTEN or consuming notifications, postgres-nio
            // sometimes never resumed the listener, so run() and withStore waited forever after close().
            await withTaskGroup(of: Void.self) { listening in
                listening.addTask { await self.listener.run() }
                listening.addTask { await self.runConnectionReaper() }
                listening.addTask { await self.runDeferredNotifications() }
                await withTaskGroup(of: Void.self) { writing in
                    for _ in 0..<Self.maxGroupsInFlight {
                        writing.addTask { await self.runGroupWriter() }
                    }
                    await readiness.stopRequested.wait()
                    stopGroupWriters()
                }
                // The notification owed for the last commits goes out before the pool stops.
                await sendDueNotification()
                listening.cancelAll()
            }
            group.cancelAll()
        }
    }

    /// Stops the store: ``run()`` stops the notification listener and the pool it owns and
    /// returns; operations fail with ``PostgresStoreError/closed`` from now on.
    public func close() async {
        readiness.close()
    }

    /// Waits until ``run()`` has migrated the schema and the store is ready for operations.
    ///
    /// - Throws: the error that stopped ``run()`` before the store was ready,
    ///   ``PostgresStoreError/closed`` once it has stopped, or `CancellationError`.
    public func waitUntilReady() async throws {
        try await readiness.waitUntilReady()
    }

    /// Runs `store` around `body`: starts ``run()``, waits until the store is ready, runs `body`,
    /// then closes the store and waits for ``run()`` to end. For scripts and tests; an application
    /// runs the store in its `ServiceGroup` instead.
    ///
    /// - Throws: what preparing the store threw, or what `body` threw.
    public static func withStore<Result: Sendable>(
        _ store: PostgresEventStore, _ body: (PostgresEventStore) async throws -> Result
    ) async throws -> Result {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await store.run() }
            let outcome: Swift.Result<Result, any Error>
            do {
                try await store.waitUntilReady()
                outcome = .success(try await body(store))
            } catch {
                outcome = .failure(error)
            }
            await store.close()
            // The error of a run() that failed is already the outcome (through waitUntilReady).
            while (try? await group.next()) != nil {}
            return try outcome.get()
        }
    }

    /// Opens a store at `url` with a connection pool of its own, runs `body` with it once its
    /// schema is ready, and closes it: ``withStore(_:_:)`` for a URL.
    public static func withStore<Result: Sendable>(
        url: String, configuration: Configuration = Configuration(),
        _ body: (PostgresEventStore) async throws -> Result
    ) async throws -> Result {
        try await withStore(try PostgresEventStore(url: url, configuration: configuration), body)
    }
}

extension PostgresEventStore {
    /// Drops the store's schema with everything in it: events, checkpoints, leases, parked events
    /// and the tables of every ``PostgresProjection`` in it. For tests and throwaway environments;
    /// ``migrate()`` creates an empty schema again (``resetSchema()`` does both).
    ///
    /// - Throws: ``PostgresStoreError`` when the database refuses (another session holds a lock on
    ///   the schema's tables, the role may not drop it).
    public func dropSchema() async throws {
        try await run { conn in
            _ = try await conn.query(
                PostgresQuery(unsafeSQL: "DROP SCHEMA IF EXISTS \(schema.rawValue) CASCADE"), logger: queryLogger)
        }
    }

    /// Drops the store's schema and migrates an empty one: every event, checkpoint and read model
    /// of it is gone. For tests.
    public func resetSchema() async throws {
        try await dropSchema()
        try await migrate()
    }
}
