import Backstage
import Logging
import PostgresNIO
import Synchronization

/// The state of a store's LISTEN connection.
public struct NotificationStatus: Sendable, Hashable {
    /// Whether the listener is connected and listening now.
    public var isListening: Bool
    /// The server process id of the listening connection (for `pg_terminate_backend` in tests
    /// and for operators), nil when not connected.
    public var backendPID: Int32?
    /// How many times the listener has connected and started listening.
    public var connections: Int
    /// Notifications received since the store opened.
    public var notificationsReceived: Int
}

/// Holds one pooled connection in `LISTEN` for the store's channel and turns every notification
/// into a wake-up hint. When the connection is lost it reconnects (with a doubling delay up to
/// 2 seconds), listens again and sends one hint, since appends may have been missed meanwhile.
///
/// It runs inside the store's ``PostgresEventStore/run()``, and only once someone asked for
/// notifications (``request()``): a store nobody subscribes to holds no connection for it.
final class NotificationListener: Sendable {
    private struct State {
        var status = NotificationStatus(
            isListening: false, backendPID: nil, connections: 0, notificationsReceived: 0)
    }

    private let client: PostgresClient
    private let channel: String
    private let notifier: AppendNotifier
    private let applicationName: String
    private let initialDelay: Duration
    private let logger: Logger
    /// postgres-nio's query logs (debug/trace level) go to the listener's logger.
    private var queryLogger: Logger { logger }
    private let state = Mutex(State())
    private let requested = Signal(sticky: true)

    init(
        client: PostgresClient, channel: String, notifier: AppendNotifier, applicationName: String,
        initialDelay: Duration, logger: Logger
    ) {
        self.client = client
        self.channel = channel
        self.notifier = notifier
        self.applicationName = applicationName
        self.initialDelay = initialDelay
        self.logger = logger
    }

    var status: NotificationStatus { state.withLock { $0.status } }

    /// Asks for notifications: ``run()`` starts listening (once).
    func request() {
        requested.signal()
    }

    /// Waits for the first ``request()``, then listens until the task is cancelled, reconnecting
    /// when the connection is lost.
    func run() async {
        await requested.wait()
        if Task.isCancelled { return }
        await listenUntilCancelled()
    }

    private func listenUntilCancelled() async {
        var delay = initialDelay
        while !Task.isCancelled {
            let connectionsBefore = status.connections
            do {
                try await client.withConnection { conn in try await listen(on: conn) }
            } catch  where !Task.isCancelled {
                let reason = "\(PostgresEventStore.storeError(error))"
                logger.warning(
                    "notification listener lost its connection; reconnecting",
                    metadata: ["channel": "\(channel)", "error": "\(reason)", "retryIn": "\(delay)"])
            } catch {
                // Cancelled: the status below says it no longer listens.
            }
            state.withLock {
                $0.status.isListening = false
                $0.status.backendPID = nil
            }
            if Task.isCancelled { break }
            // A connection that listened for a while starts the backoff again.
            if status.connections > connectionsBefore { delay = initialDelay }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(2))
        }
    }

    private func listen(on conn: PostgresConnection) async throws {
        // Both queries go through queryUnlessClosed: the pool closes this connection when run()
        // is cancelled, at the moment the listener is cancelled too (a query written to the
        // closed connection would never complete, and run() would wait for ever).
        let result = try await conn.queryUnlessClosed(
            "SELECT pg_backend_pid(), set_config('application_name', \(applicationName), false)",
            logger: queryLogger)
        var pid: Int32?
        for row in result.rows { pid = try row.makeRandomAccess()[0].decode(Int32.self) }
        try await conn.listen(on: channel) { notifications in
            state.withLock {
                $0.status.isListening = true
                $0.status.backendPID = pid
                $0.status.connections += 1
            }
            // Appends may have happened while no one listened.
            notifier.notify()
            for try await _ in notifications {
                state.withLock { $0.status.notificationsReceived += 1 }
                notifier.notify()
            }
        }
        // The sequence ended without an error (cancelled, or the server ended it): give the
        // connection back in a clean state, unless it is closing.
        _ = try? await conn.queryUnlessClosed("RESET application_name", logger: queryLogger)
    }
}
