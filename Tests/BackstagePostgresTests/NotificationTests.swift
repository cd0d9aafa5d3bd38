import Backstage
import BackstageTestSupport
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import BackstagePostgres

extension PostgresTests {
    @Suite("LISTEN/NOTIFY hints")
    struct Notifications {
        @Test("an append in another process wakes a listener through NOTIFY")
        func notifyAcrossProcesses() async throws {
            try await withFreshStore { store in
                let hints = store.appendNotifications()
                #expect(try await eventually { store.notificationStatus.isListening })
                try await withPeer(of: store) { peer in
                    _ = try await peer.append([event()], to: "n-1", expected: .any, commandID: nil)
                }
                #expect(try await eventually { store.notificationStatus.notificationsReceived == 1 })
                // The hint is waiting in the stream. (The hint sent when listening starts may come
                // before or after the stream was made, as the store runs before this body: not counted.)
                var iterator = hints.makeAsyncIterator()
                #expect(await iterator.next() != nil)
            }
        }

        @Test(
            "the listening connection is terminated: events appended meanwhile arrive within one polling interval; notifications work again after"
        )
        func lostNotifications() async throws {
            let poll = Duration.seconds(2)
            // The listener waits 4 s before reconnecting, so the appends below happen while
            // nobody listens and only polling can find them.
            try await withFreshStore(configure: { $0.listenerReconnectDelay = .seconds(4) }) { store in
                let delivered = Locked<[UUID: Date]>([:])
                let subscriber = Task {
                    let follower = store.events(mode: .follow(pollInterval: poll))
                    for try await e in follower {
                        delivered.value.withLock { $0[e.id] = Date() }
                    }
                }
                defer { subscriber.cancel() }
                #expect(try await eventually { store.notificationStatus.isListening })
                try await withPeer(of: store) { writer in

                    // Notifications work: an append in the other process is received.
                    let first = event("First")
                    _ = try await writer.append([first], to: "lost-1", expected: .any, commandID: nil)
                    #expect(try await eventually { store.notificationStatus.notificationsReceived >= 1 })
                    #expect(try await eventually { delivered.value.withLock { $0[first.id] } != nil })

                    // The listening backend is terminated.
                    let pid = try #require(store.notificationStatus.backendPID)
                    let rows = try await writer.client.query("SELECT pg_terminate_backend(\(pid))")
                    for try await terminated in rows.decode(Bool.self) { #expect(terminated) }
                    #expect(try await eventually { !store.notificationStatus.isListening })

                    // Appended while nobody listens: found by polling.
                    var lost: [(UUID, Date)] = []
                    for i in 0..<3 {
                        let e = event("WhileDeaf", #"{"i":\#(i)}"#)
                        _ = try await writer.append([e], to: "lost-2", expected: .any, commandID: nil)
                        lost.append((e.id, Date()))
                        try await Task.sleep(for: .milliseconds(300))
                    }
                    #expect(store.notificationStatus.connections == 1, "the listener came back too early for this test")
                    for (id, committedAt) in lost {
                        #expect(
                            try await eventually(timeout: .seconds(5)) { delivered.value.withLock { $0[id] } != nil })
                        let lag = try #require(delivered.value.withLock { $0[id] }).timeIntervalSince(committedAt)
                        #expect(lag <= 2.3, "delivered \(lag) s after its commit; the polling interval is 2 s")
                    }

                    // The listener reconnects and LISTENs again; a new backend.
                    #expect(try await eventually { store.notificationStatus.connections == 2 })
                    #expect(try await eventually { store.notificationStatus.isListening })
                    #expect(store.notificationStatus.backendPID != pid)
                    let received = store.notificationStatus.notificationsReceived
                    let after = event("After")
                    _ = try await writer.append([after], to: "lost-3", expected: .any, commandID: nil)
                    #expect(try await eventually { store.notificationStatus.notificationsReceived > received })
                    #expect(try await eventually { delivered.value.withLock { $0[after.id] } != nil })
                }
            }
        }
    }
}
