import Backstage
import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// The box office over HTTP (Hummingbird 2).
///
/// | Request | Command or query |
/// |---|---|
/// | `POST /shows` `{"id"?, "title", "capacity"}` | ``ScheduleShow`` |
/// | `POST /shows/{id}/tickets` `{"ticketID"?}` | ``AddTicket`` |
/// | `POST /shows/{id}/sell` `{"buyer"}` | ``SellTicket`` |
/// | `POST /shows/{id}/tickets/{ticketID}/refund` | ``RefundTicket`` |
/// | `GET /shows/{id}` | the show's state |
/// | `GET /shows/{id}/history` | the show's events |
/// | `GET /shows/{id}/seats` | seats, from the `show_seats` read model |
/// | `GET /shows/{id}/sales` | sales, from the `show_sales` read model |
///
/// Queries of read models answer what the projections have applied so far (eventually
/// consistent). A command sent with `Consistency: strong` (or `X-Read-Your-Writes: true`) is
/// dispatched with `.strong` consistency: it answers once every projection has applied its events,
/// so a query sent after the answer sees the write. If the read models do not catch up within the
/// app's consistency timeout it answers 504 `readModelsBehind`: the command was stored, do not retry
/// it as a new one.
///
/// A command sent with an `Idempotency-Key` header (a UUID) runs once: a retry with the same key
/// returns the original result (with `"duplicate": true`) and stores nothing. A rejected command
/// answers 404 (unknown show or ticket), 409 (the state does not allow it) or 422 (invalid input),
/// with `{"error": code, "message": text}`.
public enum BoxOfficeAPI {
    /// The HTTP application serving `app` on `host`:`port` (port 0 picks a free port); the
    /// read-model routes answer from `readModels` (404 without them). `onListening` gets the
    /// port the server listens on once it accepts connections.
    public static func application(
        app: BackstageApp, readModels: BoxOfficeReadModels? = nil, host: String = "127.0.0.1", port: Int = 8080,
        logger: Logger = Logger(label: "box-office"), onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let router = Hummingbird.Router()
        router.add(middleware: ErrorMiddleware())
        router.post("shows") { request, context in
            let body = try await request.decode(as: ScheduleRequest.self, context: context)
            let command = ScheduleShow(
                showID: body.id ?? UUID().uuidString.lowercased(), title: body.title, capacity: body.capacity)
            return try await dispatch(command, request, on: app, status: .created)
        }
        router.post("shows/:id/tickets") { request, context in
            let body = try await request.decode(as: AddTicketRequest.self, context: context)
            let command = AddTicket(
                showID: try context.parameters.require("id"), ticketID: body.ticketID ?? UUID().uuidString.lowercased())
            return try await dispatch(command, request, on: app, status: .created)
        }
        router.post("shows/:id/sell") { request, context in
            let body = try await request.decode(as: SellRequest.self, context: context)
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
        return Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "box-office"),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            logger: logger)
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

/// A show's state, as the API returns it.
public struct ShowView: ResponseCodable, Equatable {
    /// The show's id.
    public var id: String?
    /// Its title.
    public var title: String
    /// Its seats.
    public var capacity: Int
    /// The stream version the state includes.
    public var version: Int64
    /// Tickets sold and not refunded.
    public var ticketsSold: Int
    /// Tickets on sale, in the order they will be sold.
    public var onSale: [String]
    /// Every ticket and where it stands.
    public var tickets: [String: TicketStatus]

    init(_ show: Show, version: Int64) {
        self.id = show.id
        self.title = show.title
        self.capacity = show.capacity
        self.version = version
        self.ticketsSold = show.ticketsSold
        self.onSale = show.onSale
        self.tickets = show.tickets
    }
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

/// The answer to a command.
public struct DispatchView: ResponseEncodable {
    /// The show after the command.
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

/// An error answered as `{"error": code, "message": text}` with an HTTP status.
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

    struct Body: Encodable {
        var error: String
        var message: String
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = try context.responseEncoder.encode(
            Body(error: code, message: message), from: request, context: context)
        response.status = status
        return response
    }
}

/// Turns the errors of dispatch into ``APIError``s.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        do {
            return try await next(request, context)
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
        }
    }
}
