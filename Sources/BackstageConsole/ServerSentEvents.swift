import AsyncAlgorithms
import Backstage
import Foundation
import Hummingbird
import ServiceLifecycle

/// The event log as server-sent events (`text/event-stream`), for browsers' `EventSource` and
/// for scripts (`curl -N`).
///
/// Each event of the log is one message whose `id` is its log position (so a reconnecting
/// `EventSource` resumes after the last event it got, through the `Last-Event-ID` header) and
/// whose `data` is one line of JSON:
///
/// ```
/// id: 42
/// data: {"position":42,"stream":"show-gala","version":3,"type":"TicketSold","recordedAt":"...","data":{...},"metadata":{...}}
/// ```
public enum ServerSentEvents {
    /// Streams the log of `store` after a position, following new events until the client goes
    /// away or the server shuts down gracefully.
    ///
    /// The request chooses where to start and what to send: the `Last-Event-ID` header or the
    /// `after` query parameter (a log position as the `id` lines print it; default: the head, so
    /// only new events), `type` and `category` (repeatable; the filter runs in the database).
    /// `limit=N` ends the stream after N events (for scripts and tests). An idle stream sends a
    /// comment line every `heartbeat`, so a closed client is noticed.
    public static func log(
        store: any EventStore, request: Request, pollInterval: Duration = .milliseconds(500),
        heartbeat: Duration = .seconds(15)
    ) -> Response {
        let query = request.uri.queryParameters
        let types = query.getAll("type").filter { !$0.isEmpty }
        let categories = query.getAll("category").filter { !$0.isEmpty }
        let filter = EventFilter(
            types: types.isEmpty ? nil : Set(types), categories: categories.isEmpty ? nil : Set(categories))
        let resumeID = request.headers[.init("Last-Event-ID")!]
        let after = (resumeID ?? query.get("after")).flatMap(parseLogPosition)
        let limit = query.get("limit").flatMap { Int($0) }.map { max(0, $0) }
        var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-store"]
        headers[.init("X-Accel-Buffering")!] = "no"
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                let start: LogPosition
                if let after { start = after } else { start = try await store.headPosition() }
                // A first comment: the client knows at once that the stream is open.
                try await writer.write(ByteBuffer(string: ": backstage log after \(start)\nretry: 2000\n\n"))
                let messages = AsyncChannel<ByteBuffer>()
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        do {
                            guard limit != 0 else { throw CancellationError() }
                            let events = store.events(
                                after: start, filter: filter, pageSize: 200, mode: .follow(pollInterval: pollInterval))
                            var sent = 0
                            for try await event in events {
                                if let limit, sent >= limit { break }
                                await messages.send(ByteBuffer(string: message(for: event)))
                                sent += 1
                                if let limit, sent >= limit { break }
                            }
                        } catch {}
                        messages.finish()
                    }
                    group.addTask {
                        while (try? await Task.sleep(for: heartbeat)) != nil {
                            await messages.send(ByteBuffer(string: ": keep-alive\n\n"))
                        }
                    }
                    group.addTask {
                        // The server is stopping: end the stream, so the connection can close.
                        try? await gracefulShutdown()
                        messages.finish()
                    }
                    // Only this task writes; a failed write (the client left) ends the stream.
                    do {
                        for await buffer in messages { try await writer.write(buffer) }
                    } catch {}
                    messages.finish()
                    group.cancelAll()
                }
                try await writer.finish(nil)
            })
    }

    /// One event as an SSE message.
    static func message(for event: RecordedEvent) -> String {
        "id: \(event.logPosition)\ndata: \(json(event))\n\n"
    }

    /// One event as one line of JSON.
    static func json(_ event: RecordedEvent) -> String {
        var metadata: [String: Any] = [:]
        if let id = event.metadata.commandID { metadata["commandID"] = id.uuidString }
        if let id = event.metadata.causationID { metadata["causationID"] = id.uuidString }
        if let id = event.metadata.correlationID { metadata["correlationID"] = id.uuidString }
        if !event.metadata.fields.isEmpty { metadata["fields"] = event.metadata.fields }
        let object: [String: Any] = [
            "position": event.position,
            "logPosition": event.logPosition.description,
            "stream": event.stream,
            "version": event.streamVersion,
            "type": event.type,
            "schemaVersion": event.schemaVersion,
            "id": event.id.uuidString,
            "recordedAt": iso8601(event.recordedAt),
            "data": (try? JSONSerialization.jsonObject(with: event.data, options: [.fragmentsAllowed]))
                ?? String(decoding: event.data, as: UTF8.self),
            "metadata": metadata,
        ]
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data("{}".utf8)
        // JSONSerialization escapes line breaks inside strings: the line stays one line.
        return String(decoding: data, as: UTF8.self)
    }
}

/// Parses a log position as `LogPosition.description` prints it: `P` or `T:P`.
func parseLogPosition(_ text: String) -> LogPosition? {
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    switch parts.count {
    case 1:
        guard let position = Int64(parts[0]), position >= 0 else { return nil }
        return LogPosition(position: position)
    case 2:
        guard let transaction = UInt64(parts[0]), let position = Int64(parts[1]), position >= 0 else { return nil }
        return LogPosition(transaction: transaction, position: position)
    default: return nil
    }
}

/// `date` in ISO 8601, UTC, with milliseconds.
func iso8601(_ date: Date) -> String {
    date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
}
