import Foundation

/// Where a read of the global log ends.
public enum LogReadMode: Sendable, Hashable {
    /// At the head: the sequence ends (returns nil) after the last event visible when a read
    /// comes back short.
    case toHead
    /// Never: after the head the sequence waits for new events, woken by
    /// ``EventStore/appendNotifications()`` and, since a hint can be lost, by polling every
    /// `pollInterval`.
    case follow(pollInterval: Duration = .seconds(1))
}

/// The global log read page by page as an `AsyncSequence`, from a position, in log order.
///
/// Made by ``EventStore/events(after:filter:pageSize:mode:)``. Pages are read lazily: each
/// `next()` reads a page when the previous one is used up; nothing runs in the background.
/// The sequence resumes after the last event it delivered, so it never skips or repeats one.
///
/// - Cancellation: when the iterating task is cancelled, `next()` returns the events of the page
///   already read, then throws `CancellationError` instead of reading another page (also while it
///   waits for new events in ``LogReadMode/follow(pollInterval:)`` mode).
/// - Errors: the store's errors are thrown; an invalid page size throws
///   ``EventStoreError/invalidInput(_:)`` from the first `next()`.
public struct LogEvents: AsyncSequence, Sendable {
    public typealias Element = RecordedEvent

    let store: any EventStore
    let start: LogPosition
    let filter: EventFilter
    let pageSize: Int
    let mode: LogReadMode

    public func makeAsyncIterator() -> AsyncIterator {
        var iterator = AsyncIterator(
            store: store, position: start, filter: filter, pageSize: pageSize, mode: mode)
        // Listen before the first read, so no append between a read that finds the head and
        // the wait that follows is missed.
        if case .follow = mode { iterator.notifications = store.appendNotifications() }
        return iterator
    }

    /// Reads the log for ``LogEvents``.
    public struct AsyncIterator: AsyncIteratorProtocol, Sendable {
        let store: any EventStore
        /// The position of the last event delivered (or the start).
        var position: LogPosition
        let filter: EventFilter
        let pageSize: Int
        let mode: LogReadMode
        var buffer: [RecordedEvent] = []
        var index = 0
        var atEnd = false
        var validated = false
        var notifications: AsyncStream<Void>?
        var notificationsEnded = false

        init(store: any EventStore, position: LogPosition, filter: EventFilter, pageSize: Int, mode: LogReadMode) {
            self.store = store
            self.position = position
            self.filter = filter
            self.pageSize = pageSize
            self.mode = mode
        }

        /// The next event; nil at the head in ``LogReadMode/toHead`` mode.
        public mutating func next() async throws -> RecordedEvent? {
            if !validated {
                try store.limits.validate(pageSize: pageSize)
                validated = true
            }
            while true {
                if index < buffer.count {
                    let event = buffer[index]
                    index += 1
                    position = event.logPosition
                    return event
                }
                if atEnd { return nil }
                try Task.checkCancellation()
                var pollInterval: Duration? = nil
                if case .follow(let interval) = mode {
                    pollInterval = interval
                    // Subscribe again before the read if a timed-out wait ended the last subscription.
                    if notifications == nil, !notificationsEnded { notifications = store.appendNotifications() }
                }
                let page: [RecordedEvent]
                do {
                    page = try await store.readAll(after: position, limit: pageSize, filter: filter)
                } catch {
                    if Task.isCancelled { throw CancellationError() }
                    throw error
                }
                buffer = page
                index = 0
                guard page.count < pageSize else { continue }
                guard let pollInterval else {
                    atEnd = true
                    continue
                }
                if page.isEmpty { try await waitForAppend(pollInterval) }
            }
        }

        private enum Wake: Sendable { case notified, ended, timedOut }

        /// Waits for a notification hint or `interval`, whichever comes first.
        private mutating func waitForAppend(_ interval: Duration) async throws {
            guard let hints = notifications else {
                try await Task.sleep(for: interval)
                return
            }
            let wake = await withTaskGroup(of: Wake.self) { group in
                group.addTask {
                    var iterator = hints.makeAsyncIterator()
                    return await iterator.next() == nil ? .ended : .notified
                }
                group.addTask {
                    do {
                        try await Task.sleep(for: interval)
                        return .timedOut
                    } catch {
                        return .ended
                    }
                }
                let first = await group.next() ?? .timedOut
                group.cancelAll()
                return first
            }
            try Task.checkCancellation()
            switch wake {
            case .notified: break
            case .timedOut:
                // Cancelling the wait on an `AsyncStream` finishes it: subscribe again before the
                // next read.
                notifications = nil
            case .ended:
                notifications = nil
                notificationsEnded = true
            }
        }
    }
}

/// One stream read page by page as an `AsyncSequence`, forward or backward from a version.
///
/// Made by ``EventStore/events(inStream:from:through:direction:pageSize:)``. Pages are read
/// lazily by `next()`. The sequence ends (returns nil) at the end of the stream (or at the
/// `through` version). When the iterating task is cancelled, `next()` throws
/// `CancellationError` instead of reading another page; the store's errors are thrown.
public struct StreamEvents: AsyncSequence, Sendable {
    public typealias Element = RecordedEvent

    let store: any EventStore
    let stream: String
    let start: Int64
    let last: Int64?
    let direction: ReadDirection
    let pageSize: Int

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(
            store: store, stream: stream, nextVersion: start, last: last, direction: direction, pageSize: pageSize)
    }

    /// Reads the stream for ``StreamEvents``.
    public struct AsyncIterator: AsyncIteratorProtocol, Sendable {
        let store: any EventStore
        let stream: String
        var nextVersion: Int64
        let last: Int64?
        let direction: ReadDirection
        let pageSize: Int
        var buffer: [RecordedEvent] = []
        var index = 0
        var atEnd = false

        /// The next event of the stream; nil at its end.
        public mutating func next() async throws -> RecordedEvent? {
            while true {
                if index < buffer.count {
                    let event = buffer[index]
                    index += 1
                    if let last, direction == .forward ? event.streamVersion > last : event.streamVersion < last {
                        atEnd = true
                        buffer = []
                        return nil
                    }
                    nextVersion = direction == .forward ? event.streamVersion + 1 : event.streamVersion - 1
                    return event
                }
                if atEnd { return nil }
                try Task.checkCancellation()
                var limit = pageSize
                switch direction {
                case .forward:
                    if let last {
                        guard nextVersion <= last else { return nil }
                        limit = Int(Swift.min(Int64(pageSize), last - nextVersion + 1))
                    }
                case .backward:
                    guard nextVersion >= Swift.max(last ?? 1, 1) else { return nil }
                }
                let page: [RecordedEvent]
                do {
                    page = try await store.readStream(stream, from: nextVersion, direction: direction, limit: limit)
                } catch {
                    if Task.isCancelled { throw CancellationError() }
                    throw error
                }
                buffer = page
                index = 0
                if page.count < limit || page.isEmpty { atEnd = true }
            }
        }
    }
}

extension EventStore {
    /// The global log after `position`, as an `AsyncSequence` read in pages of `pageSize`,
    /// keeping the events that match `filter` (evaluated in the database).
    ///
    /// With ``LogReadMode/toHead`` the sequence ends at the head; with
    /// ``LogReadMode/follow(pollInterval:)`` it waits for and delivers new events until the
    /// iterating task is cancelled (then `next()` throws `CancellationError`). See ``LogEvents``.
    public func events(
        after position: LogPosition = .start, filter: EventFilter = .all, pageSize: Int = 500,
        mode: LogReadMode = .toHead
    ) -> LogEvents {
        LogEvents(store: self, start: position, filter: filter, pageSize: pageSize, mode: mode)
    }

    /// The events of `stream` as an `AsyncSequence` read in pages of `pageSize`: forward from
    /// version `version` (default 1) up to `last` (default: the end), or backward from `version`
    /// (default `Int64.max`: the last event) down to `last` (default 1). See ``StreamEvents``.
    public func events(
        inStream stream: String, from version: Int64? = nil, through last: Int64? = nil,
        direction: ReadDirection = .forward, pageSize: Int = 500
    ) -> StreamEvents {
        let start = version ?? (direction == .forward ? 1 : Int64.max)
        return StreamEvents(
            store: self, stream: stream, start: start, last: last, direction: direction, pageSize: pageSize)
    }
}
