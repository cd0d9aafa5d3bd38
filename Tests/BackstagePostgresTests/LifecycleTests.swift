import Backstage
import Foundation
import Logging
import ServiceLifecycle
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    @Suite("Store lifecycle: run, readiness, close, ServiceGroup")
    struct Lifecycle {
        @Test("operations issued before run() wait until it has migrated the schema, then succeed")
        func operationsWaitForRun() async throws {
            let store = try unstartedStore()
            try await withThrowingTaskGroup(of: AppendResult.self) { group in
                group.addTask {
                    try await store.append(
                        [event()], to: "early-1", expected: .noStream, commandID: nil)
                }
                // Nothing connects before run(): the append waits.
                try await Task.sleep(for: .milliseconds(200))
                try await PostgresEventStore.withStore(store) { store in
                    let appended = try #require(try await group.next())
                    #expect(appended.lastVersion == 1)
                    #expect(try await store.streamVersion("early-1") == 1)
                    try await store.dropSchema()
                }
            }
        }

        @Test(
            "in a ServiceGroup, graceful shutdown ends run() after the services listed after the store",
            .timeLimit(.minutes(2)))
        func serviceGroup() async throws {
            let store = try unstartedStore()
            let pipelines = try PipelineService(store: store, handlers: [])
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [.init(service: store), .init(service: pipelines)], logger: Logger(label: "test")))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                _ = try await store.append([event()], to: "group-1", expected: .noStream, commandID: nil)
                let hints = store.appendNotifications()
                #expect(try await eventually { store.notificationStatus.isListening })
                _ = hints
                try await store.dropSchema()
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            #expect(!store.notificationStatus.isListening)
            await #expect(throws: PostgresStoreError.closed) { try await store.streamVersion("group-1") }
            await #expect(throws: PostgresStoreError.closed) { try await store.run() }
        }

        @Test(
            "in a ServiceGroup, graceful shutdown writes the append in flight before the pool stops (the pool does not stop with the group's signal)",
            .timeLimit(.minutes(2)))
        func serviceGroupWritesInFlightAppend() async throws {
            let store = try unstartedStore()
            let pipelines = try PipelineService(store: store, handlers: [])
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [.init(service: store), .init(service: pipelines)], logger: Logger(label: "test")))
            try await withThrowingTaskGroup(of: AppendResult?.self) { tasks in
                tasks.addTask {
                    try await group.run()
                    return nil
                }
                try await store.waitUntilReady()
                try await withPeer(of: store) { peer in
                    // Every append transaction takes the appender lock, shared: held exclusively
                    // here, it holds the next append in its group writer, on a pooled connection.
                    let appenders = store.appenderLockClass
                    try await peer.client.withConnection { conn in
                        _ = try await conn.query(
                            "SELECT pg_advisory_lock(hashtext(\(appenders)), 0)", logger: Logger(label: "test"))
                        tasks.addTask {
                            try await store.append([event()], to: "in-flight-1", expected: .noStream, commandID: nil)
                        }
                        #expect(
                            try await eventually {
                                let rows = try await conn.query(
                                    """
                                    SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                                    AND classid::bigint = (hashtext(\(appenders))::bigint + 4294967296) % 4294967296
                                    """, logger: Logger(label: "test"))
                                for try await n in rows.decode(Int64.self) { return n > 0 }
                                return false
                            }, "the append did not reach the appender lock")
                        await group.triggerGracefulShutdown()
                        // The store's graceful stop has begun once operations fail with closed;
                        // then give a pool that would stop with it time to close the connections.
                        #expect(
                            try await eventually {
                                do {
                                    _ = try await store.headPosition()
                                    return false
                                } catch PostgresStoreError.closed { return true }
                            })
                        try await Task.sleep(for: .milliseconds(500))
                        _ = try await conn.query(
                            "SELECT pg_advisory_unlock(hashtext(\(appenders)), 0)", logger: Logger(label: "test"))
                    }
                    var appended: AppendResult?
                    for try await result in tasks { if let result { appended = result } }
                    #expect(appended?.lastVersion == 1)
                    #expect(try await peer.streamVersion("in-flight-1") == 1)
                    try await peer.dropSchema()
                }
            }
        }

        @Test(
            "cancelling run() while the notification listener listens ends run(), every time (the pool and the listener stop at once)",
            .timeLimit(.minutes(1)))
        func cancelWhileListening() async throws {
            var configuration = PostgresEventStore.Configuration()
            configuration.schema = freshSchemaName()
            let url = try PostgresTestEnvironment.requireURL()
            // Before queryUnlessClosed, some cancellation within these rounds left run() waiting
            // for ever (the benchmark program hung so about once in 13 runs): the listener's
            // sequence ended (cancelled) and it reset the connection with a query written after
            // the pool had closed it, which postgres-nio never completes.
            for round in 0..<40 {
                let store = try PostgresEventStore(url: url, configuration: configuration)
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask { try? await store.run() }
                    try await store.waitUntilReady()
                    let hints = store.appendNotifications()
                    #expect(try await eventually { store.notificationStatus.isListening }, "round \(round)")
                    _ = try await store.append([event()], to: "cancel-\(round)", expected: .noStream, commandID: nil)
                    _ = hints
                    if round == 39 { try await store.dropSchema() }
                    tasks.cancelAll()
                    try await tasks.waitForAll()
                }
                #expect(!store.notificationStatus.isListening)
            }
        }

        @Test(
            "close() ends run(), also while the server is unreachable; operations then fail with closed",
            .timeLimit(.minutes(1)))
        func closeAndFailure() async throws {
            let store = try unstartedStore()
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await store.run() }
                try await store.waitUntilReady()
                try await store.dropSchema()
                await store.close()
                try await tasks.waitForAll()
            }
            await #expect(throws: PostgresStoreError.closed) {
                try await store.append([event()], to: "closed-1", expected: .any, commandID: nil)
            }

            // Port 1 on loopback refuses connections: the pool keeps retrying, operations wait,
            // and close() ends both.
            var configuration = PostgresEventStore.Configuration()
            configuration.schema = freshSchemaName()
            let unreachable = try PostgresEventStore(url: "postgres://u@127.0.0.1:1/db", configuration: configuration)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await unreachable.run() }
                tasks.addTask {
                    await #expect(throws: PostgresStoreError.closed) { try await unreachable.headPosition() }
                }
                try await Task.sleep(for: .milliseconds(300))
                await unreachable.close()
                try await tasks.waitForAll()
            }
        }
    }
}
