import Backstage
import Foundation
import Hummingbird

/// Decides whether a request may change something (replay or discard a parked event).
///
/// The console's pages only read; its two actions go through this guard, checked on every POST
/// (and when a page decides whether to show the buttons). The default, ``readOnly``, refuses
/// every action.
///
/// ```swift
/// // Only requests carrying the operators' token may act.
/// let operators = ConsoleGuard { request in request.headers[.authorization] == "Bearer \(token)" }
/// ```
public struct ConsoleGuard: Sendable {
    /// Whether `request` may replay or discard.
    public let allows: @Sendable (Request) async -> Bool

    /// A guard deciding from the request.
    public init(_ allows: @escaping @Sendable (Request) async -> Bool) {
        self.allows = allows
    }

    /// Refuses every action: the console only reads.
    public static let readOnly = ConsoleGuard { _ in false }

    /// Allows every action to anyone who can reach the console: for a console reachable only by
    /// operators (loopback, a private network, behind an authenticating proxy).
    public static let allowAll = ConsoleGuard { _ in true }
}

/// A web console over a Backstage application, mounted into a Hummingbird router.
///
/// Server-rendered pages (no build step, no external script or style): the streams and their
/// events with metadata and causation links, the global log with a live tail (server-sent
/// events), the subscriptions with checkpoint, lag and leader, the parked events with replay and
/// discard buttons (behind a ``ConsoleGuard``), and the state of a registered aggregate at any
/// version. Every piece of user data is HTML-escaped (see ``HTML``).
///
/// ```swift
/// var console = BackstageConsole(app: app, pipelines: pipelines)
/// console.register(Show.self)                  // its state, as JSON, at any version
/// console.addRoutes(to: router, at: "/console")
/// ```
///
/// It reads through the store's `StoreInspector` (`EventStore.inspector`) and the store
/// itself; `pipelines` (optional) adds the live state of this process's subscriptions and the
/// replay of parked events.
public struct BackstageConsole: Sendable {
    /// Settings of the console.
    public struct Configuration: Sendable {
        /// The name in the header and the page titles.
        public var title = "Backstage"
        /// Events, streams or parked events per page.
        public var pageSize = 50
        /// Who may replay or discard parked events; default: nobody.
        public var actions: ConsoleGuard = .readOnly
        /// How often the live tail looks for new events when no notification wakes it.
        public var tailPollInterval: Duration = .milliseconds(500)
        /// How often an idle live tail sends a comment, so a closed client is noticed.
        public var heartbeatInterval: Duration = .seconds(15)
        /// How many events of the log a causation link scans for an event id that is not a command id.
        public var causationScanLimit = 100_000

        /// The defaults.
        public init() {}
    }

    /// The application whose store the console reads.
    public let app: BackstageApp
    /// The pipelines of this process, if any: live subscription state and parked-event replay.
    public let pipelines: PipelineService?
    /// The settings.
    public var configuration: Configuration
    var aggregates: [String: RegisteredAggregate] = [:]

    /// A console over `app`'s store; `pipelines` adds live subscription state and the replay of
    /// parked events.
    public init(app: BackstageApp, pipelines: PipelineService? = nil, configuration: Configuration = Configuration()) {
        self.app = app
        self.pipelines = pipelines
        self.configuration = configuration
    }

    /// Shows the state of `A` at any version, as JSON.
    public mutating func register<A: Aggregate & Encodable>(_ type: A.Type) {
        register(type) { state in
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            return (try? encoder.encode(state)).map { String(decoding: $0, as: UTF8.self) } ?? String(reflecting: state)
        }
    }

    /// Shows the state of `A` at any version, as `describe` writes it (plain text, escaped).
    public mutating func register<A: Aggregate>(_ type: A.Type, describe: @escaping @Sendable (A) -> String) {
        aggregates[A.category] = RegisteredAggregate(
            name: "\(A.self)", category: A.category,
            load: { app, id, version in
                let loaded =
                    if let version { try await app.load(A.self, id: id, atVersion: version) } else {
                        try await app.load(A.self, id: id)
                    }
                return (loaded.version, describe(loaded.state))
            })
    }

    /// Adds the console's pages under `path` (default `/console`).
    public func addRoutes<Context: RequestContext>(to router: Hummingbird.Router<Context>, at path: String = "/console")
    {
        let base = "/" + path.split(separator: "/").joined(separator: "/")
        let pages = ConsolePages(console: self, base: base)
        let group = router.group(RouterPath(base))
        group.get { request, _ in await pages.respond { try await pages.overview(request) } }
        group.get("log") { request, _ in await pages.respond { try await pages.log(request) } }
        group.get("tail") { request, _ in
            ServerSentEvents.log(
                store: app.store, request: request, pollInterval: configuration.tailPollInterval,
                heartbeat: configuration.heartbeatInterval)
        }
        group.get("streams") { request, _ in await pages.respond { try await pages.streams(request) } }
        group.get("stream") { request, _ in await pages.respond { try await pages.stream(request) } }
        group.get("message") { request, _ in await pages.respond { try await pages.message(request) } }
        group.get("subscriptions") { request, _ in await pages.respond { try await pages.subscriptions(request) } }
        group.get("parked") { request, _ in await pages.respond { try await pages.parked(request) } }
        group.post("parked/replay") { request, _ in await pages.respond { try await pages.act(request, replay: true) } }
        group.post("parked/discard") { request, _ in
            await pages.respond { try await pages.act(request, replay: false) }
        }
        group.get("aggregates") { request, _ in await pages.respond { try await pages.aggregates(request) } }
        group.get("aggregate") { request, _ in await pages.respond { try await pages.aggregate(request) } }
    }
}

/// An aggregate type the console can show.
struct RegisteredAggregate: Sendable {
    var name: String
    var category: String
    /// Loads instance `id` at a version (nil: the latest): the version reached and the state's text.
    var load: @Sendable (BackstageApp, String, Int64?) async throws -> (Int64, String)
}

/// A page that cannot be shown: its status and what to tell the operator.
struct ConsoleProblem: Error {
    var status: HTTPResponse.Status
    var title: String
    var message: String
}
