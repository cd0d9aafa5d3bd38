import Backstage
import Foundation
import HTTPTypes
import Hummingbird

/// `POST /shows/:id/reservations` with `{"customer": "...", "seats": n, "id": "..."?}` reserves seats
/// (201, the reservation); `POST /reservations/:id/pay` pays it (200; 409 `alreadyReleased` when
/// its hold time ran out); `GET /reservations/:id` shows it.
struct ReserveRequest: Decodable {
    var id: String?
    var customer: String
    var seats: Int
}

/// A reservation as the API shows it.
struct ReservationView: ResponseEncodable {
    var id: String
    var show: String
    var customer: String
    var seats: Int
    var status: String
    var version: Int64
}

extension BoxOfficeAPI {
    static func addReservationRoutes<Context: RequestContext>(to router: Hummingbird.Router<Context>, app: BackstageApp)
    {
        router.post("shows/:id/reservations") { request, context in
            let body = try await request.decode(as: ReserveRequest.self, context: context)
            let id = body.id ?? UUID().uuidString.lowercased()
            let result = try await reservation(app) {
                try await app.dispatch(
                    ReserveSeats(
                        reservationID: id, showID: try context.parameters.require("id"), customer: body.customer,
                        seats: body.seats))
            }
            return EditedResponse(status: .created, response: view(id, result.state, result.version))
        }
        router.post("reservations/:id/pay") { _, context in
            let id = try context.parameters.require("id")
            let result = try await reservation(app) { try await app.dispatch(PayReservation(reservationID: id)) }
            return view(id, result.state, result.version)
        }
        router.get("reservations/:id") { _, context in
            let id = try context.parameters.require("id")
            let loaded = try await app.load(Reservation.self, id: id)
            guard loaded.version > 0 else { throw APIError(.notFound, "unknownReservation", "no reservation \(id)") }
            return view(id, loaded.state, loaded.version)
        }
    }

    private static func view(_ id: String, _ r: Reservation, _ version: Int64) -> ReservationView {
        ReservationView(
            id: id, show: r.showID, customer: r.customer, seats: r.seats, status: r.status.rawValue, version: version)
    }

    private static func reservation(
        _ app: BackstageApp, _ body: () async throws -> Dispatched<Reservation>
    ) async throws -> Dispatched<Reservation> {
        do {
            return try await body()
        } catch let rejection as ReservationError {
            let status: HTTPResponse.Status =
                switch rejection {
                case .unknownReservation: .notFound
                case .invalidSeats: .unprocessableContent
                case .alreadyReserved, .alreadyPaid, .alreadyReleased: .conflict
                }
            throw APIError(status, rejection.code, rejection.description)
        }
    }
}
