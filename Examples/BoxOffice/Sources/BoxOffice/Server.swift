import Backstage
import BackstageConsole
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Prometheus

/// The box office over HTTP (Hummingbird 2).
///
/// | Request | Command or query |
/// |---|---|
/// | `POST /shows` `{"id"?, "title", "capacity"}` | ``ScheduleShow`` |
/// | `POST /shows/{id}/tickets` `{"ticketID"?}` | ``AddTicket`` |
/// | `POST /shows/{id}/sell` `{"buyer"}` | ``SellTicket`` |
/// | `POST /shows/{id}/tickets/{ticketID}/refund` | ``RefundTicket`` |
/// | `GET /shows/{id}` | the show's summary (no ticket list: it stays small as the show grows) |
/// | `GET /shows/{id}/tickets` | every ticket and where it stands |
/// | `GET /shows/{id}/history` | the show's events |
/// | `GET /shows/{id}/seats` | seats, from the `show_seats` read model |
/// | `GET /shows/{id}/sales` | sales, from the `show_sales` read model |
/// | `GET /events` | the event log as server-sent events (`?after=`, `?type=`, `?category=`, `Last-Event-ID`) |
/// | `GET /health` | 200 when the store answers and no pipeline failed, 503 otherwise |
/// | `GET /metrics` | Prometheus metrics (with a registry) |
/// | `/console` | the Backstage web console (with a console) |
///
/// A command answers with a summary of the show and the events the command stored, never the
/// show's whole ticket list.
/// Queries of read models answer what the projections have applied so far (eventually
/// consistent). A command sent with `Consistency: strong` (or `X-Read-Your-Writes: true`) is
/// dispatched with `.strong` consistency: it answers once every projection has applied its events,
/// so a query sent after the answer sees the write. If the read models do not catch up within the
/// app's consistency timeout it answers 504 `readModelsBehind`: the command was stored, do not retry
/// it as a new one.
///
/// A command sent with an `Idempotency-Key` header (a UUID) runs once: a retry with the same key
/// returns the original result (with `"duplicate": true`) and stores nothing. Every error answers
/// in one shape, `{"error": code, "message": text}`: 400 for a body that is not JSON or lacks a
/// field (`malformedJSON`, `invalidRequest`, saying which field), 404 for an unknown show, ticket
/// or route, 409 when the state does not allow the command, 422 for invalid input. A rejected
/// request stores nothing.
public enum BoxOfficeAPI {
    /// The HTTP application serving `app` on `host`:`port` (port 0 picks a free port); the
    /// read-model routes answer from `readModels` (404 without them). `pipelines` (the read models'
    /// and handlers' service) is what `/health` checks; `metrics` is the registry `/metrics` serves
    /// (bootstrap `MetricsSystem` with it); `console` is mounted at `/console`. `onListening` gets
    /// the port the server listens on once it accepts connections.
    public static func application(
        app: BackstageApp, readModels: BoxOfficeReadModels? = nil, pipelines: PipelineService? = nil,
        metrics: PrometheusCollectorRegistry? = nil, console: BackstageConsole? = nil, host: String = "127.0.0.1",
        port: Int = 8080, logger: Logger = Logger(label: "box-office"),
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let router = Hummingbird.Router()
        router.add(middleware: ErrorMiddleware())
        if metrics != nil { router.add(middleware: MetricsMiddleware()) }
        router.post("shows") { request, context in
            let body = try await decodeJSON(ScheduleRequest.self, from: request)
            let command = ScheduleShow(
                showID: body.id ?? UUID().uuidString.lowercased(), title: body.title, capacity: body.capacity)
            return try await dispatch(command, request, on: app, status: .created)
        }
        router.post("shows/:id/tickets") { request, context in
            let body = try await decodeJSON(AddTicketRequest.self, from: request)
            let command = AddTicket(
                showID: try context.parameters.require("id"), ticketID: body.ticketID ?? UUID().uuidString.lowercased())
            return try await dispatch(command, request, on: app, status: .created)
        }
        router.post("shows/:id/sell") { request, context in
            let body = try await decodeJSON(SellRequest.self, from: request)
            let command = SellTicket(showID: try context.parameters.require("id"), buyer: body.buyer)
            return try await dispatch(command, request, on: app, status: .ok)
        }
        router.post("shows/:id/tickets/:ticket/refund") { request, context in
            let command = RefundTicket(
                showID: try context.parameters.require("id"), ticketID: try context.parameters.require("ticket"))
            return try await dispatch(command, request, on: app, status: .ok)
        }
        router.get("shows/:id") { _, context in
            let id = try context.parameters.require("id")
            let loaded = try await app.load(Show.self, id: id)
            guard loaded.version > 0 else { throw APIError(ShowError.unknownShow(id)) }
            return ShowView(loaded.state, version: loaded.version)
        }
        router.get("shows/:id/tickets") { _, context in
            let id = try context.parameters.require("id")
            let loaded = try await app.load(Show.self, id: id)
            guard loaded.version > 0 else { throw APIError(ShowError.unknownShow(id)) }
            return TicketsView(
                show: id, version: loaded.version, onSale: loaded.state.onSale, tickets: loaded.state.tickets)
        }
        router.get("shows/:id/history") { _, context in
            let id = try context.parameters.require("id")
            let history = try await app.history(Show.self, id: id)
            guard !history.isEmpty else { throw APIError(ShowError.unknownShow(id)) }
            return HistoryView(show: id, events: history.map { EventView($0.recorded, $0.event) })
        }
        addReservationRoutes(to: router, app: app)
        if let readModels {
            router.get("shows/:id/seats") { _, context in
                let id = try context.parameters.require("id")
                guard let seats = try await readModels.seats(id) else { throw APIError(ShowError.unknownShow(id)) }
                return seats
            }
            router.get("shows/:id/sales") { _, context in
                try await readModels.sales(try context.parameters.require("id"))
            }
        }
        router.get("events") { request, _ in ServerSentEvents.log(store: app.store, request: request) }
        router.get("health") { _, _ in
            let health = await HealthView.check(store: app.store, pipelines: pipelines)
            return EditedResponse(status: health.healthy ? .ok : .serviceUnavailable, response: health)
        }
        if let metrics {
            router.get("metrics") { _, _ in
                Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.emitToBuffer())))
            }
        }
        console?.addRoutes(to: router, at: "/console")
        return Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "box-office"),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            logger: logger)
    }

    /// A Prometheus metrics factory over `registry`, for `MetricsSystem.bootstrap`. Every metric
    /// gets the label `service="box-office"`, so no metric family mixes labelled and unlabelled
    /// series (which the Prometheus registry refuses).
    public static func metricsFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.nameAndLabelSanitizer = { label, dimensions in
            (label, dimensions.contains { $0.0 == "service" } ? dimensions : dimensions + [("service", "box-office")])
        }
        return factory
    }

    private static func dispatch<C: Command>(
        _ command: C, _ request: Request, on app: BackstageApp, status: HTTPResponse.Status
    ) async throws -> EditedResponse<DispatchView> where C.Target == Show {
        var options = DispatchOptions()
        if let key = request.headers[idempotencyKey] {
            guard let id = UUID(uuidString: key) else {
                throw APIError(
                    .badRequest, "invalidIdempotencyKey", "the Idempotency-Key header must be a UUID, not '\(key)'")
            }
            options.commandID = id
        }
        if request.headers[consistencyHeader]?.lowercased() == "strong"
            || request.headers[readYourWritesHeader]?.lowercased() == "true"
        {
            options.consistency = .strong
        }
        let result = try await app.dispatch(command, options: options)
        return EditedResponse(
            status: status,
            response: DispatchView(
                show: ShowView(result.state, version: result.version),
                events: zip(result.recorded, result.events).map { EventView($0, $1) },
                duplicate: result.isDuplicate, commandID: result.commandID))
    }
}

/// The `Idempotency-Key` request header.
let idempotencyKey = HTTPField.Name("Idempotency-Key")!
/// The `Consistency` request header: `strong` dispatches with `.strong` consistency.
let consistencyHeader = HTTPField.Name("Consistency")!
/// The `X-Read-Your-Writes` request header: `true` dispatches with `.strong` consistency.
let readYourWritesHeader = HTTPField.Name("X-Read-Your-Writes")!

extension SeatsView: ResponseEncodable {}
extension SalesView: ResponseEncodable {}

// MARK: Request and response bodies

struct ScheduleRequest: Decodable {
    var id: String?
    var title: String
    var capacity: Int
}

struct AddTicketRequest: Decodable {
    var ticketID: String?
}

struct SellRequest: Decodable {
    var buyer: String
}

/// A show's summary, as the API returns it: its size does not grow with the number of tickets.
public struct ShowView: ResponseCodable, Equatable {
    /// The show's id.
    public var id: String?
    /// Its title.
    public var title: String
    /// Its seats.
    public var capacity: Int
    /// The stream version the state includes.
    public var version: Int64
    /// Tickets added to the show.
    public var tickets: Int
    /// Tickets sold and not refunded.
    public var ticketsSold: Int
    /// Tickets on sale.
    public var ticketsOnSale: Int

    init(_ show: Show, version: Int64) {
        self.id = show.id
        self.title = show.title
        self.capacity = show.capacity
        self.version = version
        self.tickets = show.tickets.count
        self.ticketsSold = show.ticketsSold
        self.ticketsOnSale = show.onSale.count
    }
}

/// Every ticket of a show and where it stands (`GET /shows/{id}/tickets`).
public struct TicketsView: ResponseCodable, Equatable {
    /// The show.
    public var show: String
    /// The stream version the list includes.
    public var version: Int64
    /// Tickets on sale, in the order they will be sold.
    public var onSale: [String]
    /// Every ticket and where it stands.
    public var tickets: [String: TicketStatus]
}

/// One stored event: `{"type", "version", "position", "recordedAt", "data"}`.
public struct EventView: Encodable, Sendable {
    let recorded: RecordedEvent
    let event: ShowEvent

    init(_ recorded: RecordedEvent, _ event: ShowEvent) {
        self.recorded = recorded
        self.event = event
    }

    enum CodingKeys: String, CodingKey { case type, version, position, recordedAt, commandID, data }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(recorded.type, forKey: .type)
        try container.encode(recorded.streamVersion, forKey: .version)
        try container.encode(recorded.position, forKey: .position)
        try container.encode(recorded.recordedAt, forKey: .recordedAt)
        try container.encodeIfPresent(recorded.metadata.commandID, forKey: .commandID)
        try event.event.encode(to: container.superEncoder(forKey: .data))
    }
}

/// The answer to a command: what it changed, not the whole show.
public struct DispatchView: ResponseEncodable {
    /// A summary of the show after the command.
    public var show: ShowView
    /// The events the command stored.
    public var events: [EventView]
    /// True when the idempotency key was used before: nothing new was stored.
    public var duplicate: Bool
    /// The command's id.
    public var commandID: UUID
}

/// A show's events.
public struct HistoryView: ResponseEncodable {
    /// The show.
    public var show: String
    /// Its events, in order.
    public var events: [EventView]
}

// MARK: Errors

/// An error answered as `{"error": code, "message": text}` with an HTTP status: the one shape of
/// every error the API answers.
struct APIError: Error, HTTPResponseError {
    var status: HTTPResponse.Status
    var code: String
    var message: String

    init(_ status: HTTPResponse.Status, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    init(_ rejection: ShowError) {
        let status: HTTPResponse.Status =
            switch rejection {
            case .unknownShow, .unknownTicket: .notFound
            case .invalidCapacity: .unprocessableContent
            case .alreadyScheduled, .capacityReached, .duplicateTicket, .soldOut, .notSold, .alreadyRefunded: .conflict
            }
        self.init(status, rejection.code, rejection.description)
    }

    /// The body of every error.
    struct Body: Codable, Equatable {
        var error: String
        var message: String
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        let data = (try? JSONEncoder().encode(Body(error: code, message: message))) ?? Data()
        return Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Decodes a request's JSON body (an empty body is `{}`), or throws an ``APIError`` that says what
/// is wrong with it: not JSON, a missing field, a field of the wrong type.
func decodeJSON<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
    let body = try await request.body.collect(upTo: 1 << 20)
    let data = body.readableBytes == 0 ? Data("{}".utf8) : Data(buffer: body)
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let error as DecodingError {
        func path(_ context: DecodingError.Context, _ key: (any CodingKey)? = nil) -> String {
            let keys = context.codingPath + (key.map { [$0] } ?? [])
            return keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            throw APIError(.badRequest, "invalidRequest", "the field '\(path(context, key))' is missing")
        case .typeMismatch(let expected, let context):
            throw APIError(
                .badRequest, "invalidRequest", "the field '\(path(context))' must be \(jsonKind(expected))")
        case .valueNotFound(let expected, let context):
            throw APIError(
                .badRequest, "invalidRequest", "the field '\(path(context))' must be \(jsonKind(expected)), not null")
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            throw APIError(.badRequest, "malformedJSON", "the body is not valid JSON")
        case .dataCorrupted(let context):
            throw APIError(
                .badRequest, "invalidRequest", "the field '\(path(context))' is invalid: \(context.debugDescription)")
        @unknown default:
            throw APIError(.badRequest, "invalidRequest", "the body does not match the request: \(error)")
        }
    }
}

/// How a JSON value of `type` is written, for error messages.
private func jsonKind(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: "a string"
    case is Int.Type, is Int64.Type, is Double.Type: "a number"
    case is Bool.Type: "true or false"
    default: "a JSON object"
    }
}

/// Turns every error into an ``APIError``: the rejections and failures of dispatch, and
/// Hummingbird's own (unknown route, body too large).
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            throw error
        } catch let rejection as ShowError {
            throw APIError(rejection)
        } catch let error as ConsistencyError {
            // The command succeeded; its read models did not catch up in time.
            throw APIError(.gatewayTimeout, "readModelsBehind", "\(error)")
        } catch let error as EventStoreError {
            switch error {
            case .wrongExpectedVersion:
                throw APIError(.conflict, "concurrentChange", "\(error)")
            case .idempotencyConflict:
                throw APIError(
                    .unprocessableContent, "idempotencyKeyReused",
                    "the Idempotency-Key was used for a different request: \(error)")
            case .invalidInput:
                throw APIError(.badRequest, "invalidInput", "\(error)")
            }
        } catch let error as HTTPError {
            switch error.status {
            case .notFound:
                throw APIError(.notFound, "notFound", "no route for \(request.method) \(request.uri.path)")
            case .contentTooLarge:
                throw APIError(.contentTooLarge, "bodyTooLarge", "the body is larger than the API accepts")
            default:
                throw APIError(
                    error.status, error.status.code < 500 ? "invalidRequest" : "internalError",
                    error.body ?? error.status.reasonPhrase)
            }
        } catch {
            // Anything else is the server's fault: logged in full, answered in the same shape
            // without internals.
            context.logger.error("\(request.method) \(request.uri.path) failed: \(String(reflecting: error))")
            throw APIError(.internalServerError, "internalError", "the server could not answer; its log says why")
        }
    }
}

// MARK: Health

/// The answer of `GET /health`: whether the store answers and how each pipeline is doing.
public struct HealthView: ResponseEncodable, Sendable {
    /// `ok` or `unavailable`.
    public var status: String
    /// Whether the store answered, and its head position.
    public var store: StoreHealth
    /// The read models and handlers of this process.
    public var subscriptions: [SubscriptionHealth]

    /// The store's part.
    public struct StoreHealth: Encodable, Sendable {
        /// Whether it answered within two seconds.
        public var reachable: Bool
        /// The head of its log.
        public var head: String?
        /// Why it did not answer.
        public var error: String?
    }

    /// One subscription's part.
    public struct SubscriptionHealth: Encodable, Sendable {
        /// The handler or projection.
        public var name: String
        /// `starting`, `catchingUp`, `live`, `stopped`, `failed` or `waiting` (not running in
        /// this process: another process may lead it).
        public var state: String
        /// Its committed checkpoint.
        public var checkpoint: String?
        /// Events between its checkpoint and the head.
        public var lagEvents: Int64?
        /// Why it failed.
        public var error: String?
    }

    /// Healthy: the store answered and no subscription failed or stopped.
    public var healthy: Bool { status == "ok" }

    /// Asks the store for its head (with a two-second limit) and the pipelines for their status.
    public static func check(store: any EventStore, pipelines: PipelineService?) async -> HealthView {
        let storeHealth: StoreHealth
        do {
            let head = try await withThrowingTaskGroup(of: LogPosition?.self) { group in
                group.addTask { try await store.headPosition() }
                group.addTask {
                    try await Task.sleep(for: .seconds(2))
                    return nil
                }
                let first = try await group.next() ?? nil
                group.cancelAll()
                return first
            }
            storeHealth =
                head.map { StoreHealth(reachable: true, head: $0.description) }
                ?? StoreHealth(reachable: false, error: "no answer within 2 s")
        } catch {
            storeHealth = StoreHealth(reachable: false, error: "\(error)")
        }
        var subscriptions: [SubscriptionHealth] = []
        var failed = false
        if let pipelines {
            for name in (Array(pipelines.handlers.keys) + Array(pipelines.projections.keys)).sorted() {
                guard let status = pipelines.status(of: name) else {
                    subscriptions.append(SubscriptionHealth(name: name, state: "waiting"))
                    continue
                }
                var entry = SubscriptionHealth(
                    name: name, state: "", checkpoint: status.checkpoint?.description, lagEvents: status.lagEvents)
                switch status.state {
                case .starting: entry.state = "starting"
                case .catchingUp: entry.state = "catchingUp"
                case .live: entry.state = "live"
                case .stopped:
                    entry.state = "stopped"
                    failed = true
                case .failed(let reason):
                    entry.state = "failed"
                    entry.error = reason
                    failed = true
                }
                subscriptions.append(entry)
            }
        }
        return HealthView(
            status: storeHealth.reachable && !failed ? "ok" : "unavailable", store: storeHealth,
            subscriptions: subscriptions)
    }
}
