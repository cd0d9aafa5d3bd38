import Backstage
import Foundation
import Synchronization

/// Wraps an event store for tests: forwards every call, records what was asked of it (stream
/// reads, appends, snapshots), counts the events it handed out, and can be told to misbehave the
/// way other processes or lost notifications make a store look.
///
/// ```swift
/// let store = RecordingEventStore(InMemoryEventStore())
/// let app = BackstageApp(store: store, router: router)
/// try await app.dispatch(AddTicket(showID: "hamlet", ticketID: "A1"))
/// #expect(store.readsFrom("show-hamlet") == [1])
/// ```
public final class RecordingEventStore: EventStore {
    /// One `readStream` call.
    public struct Read: Hashable, Sendable {
        /// The stream read.
        public var stream: String
        /// The first version asked for.
        public var from: Int64
        /// The direction.
        public var direction: ReadDirection
        /// The page size asked for.
        public var limit: Int
    }

    /// What ``appendNotifications()`` returns.
    public enum Notifications: Sendable, Hashable {
        /// The wrapped store's notifications.
        case forwarded
        /// A stream that never yields (every hint is lost).
        case silent
        /// A stream that has already ended.
        case finished
    }

    private struct Log {
        var reads: [Read] = []
        var appends: [String] = []
        var savedSnapshots: [Snapshot] = []
        var snapshotLoads: [String] = []
        var eventsFromStreams = 0
        var eventsFromLog = 0
    }

    /// The wrapped store.
    public let inner: any EventStore
    private let beforeAppend: @Sendable (String) async throws -> Void
    private let afterAppend: @Sendable (String) async -> Void
    private let hidesStoredCommands: Bool
    private let notifications: Notifications
    private let log = Mutex(Log())

    /// Wraps `inner`.
    ///
    /// - Parameters:
    ///   - inner: the store that does the work.
    ///   - beforeAppend: runs before each append with the stream's id; throwing fails the append.
    ///   - afterAppend: runs after each append, whether it succeeded or not.
    ///   - hidesStoredCommands: `appendResult(forCommand:)` finds nothing, so a retried command id
    ///     reaches the append (what a concurrent retry in another process sees).
    ///   - notifications: what ``appendNotifications()`` returns.
    public init(
        _ inner: any EventStore = InMemoryEventStore(),
        beforeAppend: @escaping @Sendable (String) async throws -> Void = { _ in },
        afterAppend: @escaping @Sendable (String) async -> Void = { _ in },
        hidesStoredCommands: Bool = false, notifications: Notifications = .forwarded
    ) {
        self.inner = inner
        self.beforeAppend = beforeAppend
        self.afterAppend = afterAppend
        self.hidesStoredCommands = hidesStoredCommands
        self.notifications = notifications
    }

    public var limits: StoreLimits { inner.limits }

    public func append(_ events: [EventData], to stream: String, expected: ExpectedVersion, commandID: UUID?)
        async throws -> AppendResult
    {
        log.withLock { $0.appends.append(stream) }
        do {
            try await beforeAppend(stream)
            let result = try await inner.append(events, to: stream, expected: expected, commandID: commandID)
            await afterAppend(stream)
            return result
        } catch {
            await afterAppend(stream)
            throw error
        }
    }

    public func readStream(_ stream: String, from version: Int64, direction: ReadDirection, limit: Int)
        async throws -> [RecordedEvent]
    {
        log.withLock { $0.reads.append(Read(stream: stream, from: version, direction: direction, limit: limit)) }
        let page = try await inner.readStream(stream, from: version, direction: direction, limit: limit)
        log.withLock { $0.eventsFromStreams += page.count }
        return page
    }

    public func readAll(after position: LogPosition, limit: Int, filter: EventFilter) async throws
        -> [RecordedEvent]
    {
        let page = try await inner.readAll(after: position, limit: limit, filter: filter)
        log.withLock { $0.eventsFromLog += page.count }
        return page
    }

    public func streamVersion(_ stream: String) async throws -> Int64 { try await inner.streamVersion(stream) }

    public func headPosition() async throws -> LogPosition { try await inner.headPosition() }

    public func appendResult(forCommand commandID: UUID) async throws -> AppendResult? {
        hidesStoredCommands ? nil : try await inner.appendResult(forCommand: commandID)
    }

    public func saveSnapshot(_ snapshot: Snapshot) async throws {
        log.withLock { $0.savedSnapshots.append(snapshot) }
        try await inner.saveSnapshot(snapshot)
    }

    public func loadSnapshot(_ stream: String, schemaVersion: Int) async throws -> Snapshot? {
        log.withLock { $0.snapshotLoads.append(stream) }
        return try await inner.loadSnapshot(stream, schemaVersion: schemaVersion)
    }

    public func appendNotifications() -> AsyncStream<Void> {
        switch notifications {
        case .forwarded:
            return inner.appendNotifications()
        case .silent, .finished:
            let (stream, continuation) = AsyncStream<Void>.makeStream()
            if notifications == .finished { continuation.finish() }
            return stream
        }
    }

    public var pipelineDefaults: PipelineDefaults { inner.pipelineDefaults }

    /// The `from` versions of the forward reads of `stream`, in order.
    public func readsFrom(_ stream: String) -> [Int64] {
        log.withLock { $0.reads.filter { $0.stream == stream && $0.direction == .forward }.map(\.from) }
    }
    /// How many `readStream` calls were made.
    public var readCount: Int { log.withLock { $0.reads.count } }
    /// How many appends were made to `stream`.
    public func appendCount(_ stream: String) -> Int { log.withLock { $0.appends.filter { $0 == stream }.count } }
    /// How many appends were made.
    public var appendCount: Int { log.withLock { $0.appends.count } }
    /// The versions of the snapshots saved for `stream`.
    public func savedSnapshotVersions(_ stream: String) -> [Int64] {
        log.withLock { $0.savedSnapshots.filter { $0.stream == stream }.map(\.version) }
    }
    /// How many times a snapshot of `stream` was loaded.
    public func snapshotLoads(_ stream: String) -> Int {
        log.withLock { $0.snapshotLoads.filter { $0 == stream }.count }
    }
    /// The events `readStream` handed out so far.
    public var eventsReadFromStreams: Int { log.withLock { $0.eventsFromStreams } }
    /// The events `readAll` handed out so far.
    public var eventsReadFromLog: Int { log.withLock { $0.eventsFromLog } }
    /// Runs `body` and returns its value with the number of events `readStream` handed out meanwhile.
    public func countingStreamReads<T>(_ body: () async throws -> T) async rethrows -> (T, Int) {
        let before = eventsReadFromStreams
        let value = try await body()
        return (value, eventsReadFromStreams - before)
    }
    /// Forgets what was recorded.
    public func forget() { log.withLock { $0 = Log() } }
}
