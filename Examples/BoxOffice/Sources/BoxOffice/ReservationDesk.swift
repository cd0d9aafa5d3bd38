import Backstage
import BackstagePostgres
import BackstageSQLite
import Foundation
import ServiceLifecycle

/// The reservation process and its command scheduler, wired over one event store: run it as a
/// `Service` next to the HTTP server (or in the demo).
public final class ReservationDesk: Service, Sendable {
    /// The process manager, run as a projection.
    public let process: ProcessManagerProjection<ReservationProcess>
    /// Dispatches the process's commands, the scheduled releases included.
    public let scheduler: CommandScheduler
    /// Runs the process manager.
    public let pipelines: PipelineService

    /// Wires the reservation process over `app`'s store: instances and outbox in the store's
    /// database (SQLite file, PostgreSQL schema, or memory).
    public init(
        app: BackstageApp, holdTime: Duration = .seconds(15 * 60), clock: any SchedulerClock = SystemSchedulerClock()
    ) throws {
        let processes: any ProcessStore
        if let sqlite = app.store as? SQLiteEventStore {
            processes = try SQLiteProcessStore(store: sqlite)
        } else if let postgres = app.store as? PostgresEventStore {
            processes = PostgresProcessStore(store: postgres)
        } else {
            processes = InMemoryProcessStore()
        }
        process = try ProcessManagerProjection(ReservationProcess(holdTime: holdTime), store: processes)
        scheduler = CommandScheduler(
            app: app, store: processes, commands: .boxOffice, processManagers: [process], clock: clock,
            pollInterval: .milliseconds(200))
        pipelines = try PipelineService(app: app, projections: [process])
    }

    /// Runs the process manager and the scheduler until shutdown or cancellation.
    public func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.pipelines.run() }
            group.addTask { try await self.scheduler.run() }
            try await group.waitForAll()
        }
    }
}

/// One link of a causation chain: an event and the command that produced it.
public struct CausationLink: Sendable {
    /// The command's name (from its fingerprint; "request" for a command sent without an explicit id).
    public var command: String
    /// The process manager that produced the command, if any.
    public var process: String?
    /// The event.
    public var event: RecordedEvent
}

/// Follows the causation of `event` back to the first request: each event names its command, and
/// each command of a process manager names the event that caused it.
public func causationChain(of event: RecordedEvent, in store: any EventStore) async throws -> [CausationLink] {
    var links: [CausationLink] = []
    var current: RecordedEvent? = event
    var seen = Set<UUID>()
    while let e = current, seen.insert(e.id).inserted {
        let name = e.metadata.fields[commandFingerprintField].map { String($0.split(separator: ":")[0]) } ?? "request"
        links.append(CausationLink(command: name, process: e.metadata.fields[commandProcessField], event: e))
        guard let cause = e.metadata.fields[commandCausationField].flatMap(UUID.init(uuidString:)) else { break }
        current = try await findEvent(cause, correlation: e.metadata.correlationID, in: store)
    }
    return links.reversed()
}

private func findEvent(_ id: UUID, correlation: UUID?, in store: any EventStore) async throws -> RecordedEvent? {
    var after = LogPosition.start
    while true {
        let page = try await store.readAll(after: after, limit: 1_000, filter: .all)
        if let found = page.first(where: { $0.id == id }) { return found }
        guard let last = page.last else { return nil }
        after = last.logPosition
    }
}

/// Renders a chain: `command -> event -> command -> event ...`.
public func describeChain(_ links: [CausationLink]) -> String {
    links.enumerated().map { i, link in
        let by = link.process.map { " (by process \($0))" } ?? ""
        return
            "    \(i == 0 ? "  " : "->") \(link.command)\(by) -> \(link.event.type) in \(link.event.stream) v\(link.event.streamVersion)"
    }.joined(separator: "\n")
}
