// The code of the "Web console" article (BackstageConsole.docc/WebConsole.md), compiled and
// served through HummingbirdTesting.
import Backstage
import BackstageConsole
import Hummingbird
import HummingbirdTesting
import Testing

func mountConsole(app: BackstageApp, pipelines: PipelineService) -> Hummingbird.Router<BasicRequestContext> {
    var configuration = BackstageConsole.Configuration()
    configuration.title = "Box office"
    configuration.actions = .readOnly  // the default: nobody replays or discards
    var console = BackstageConsole(app: app, pipelines: pipelines, configuration: configuration)
    console.register(Show.self) { show in  // its state at any version (Encodable states need no closure)
        "\(show.tickets.count) of \(show.capacity) tickets"
    }
    let router = Hummingbird.Router()  // Backstage has a Router too
    console.addRoutes(to: router, at: "/console")
    return router
}

/// The article's guard: only requests with the operator's token may replay or discard.
func operatorGuard(operatorToken: String) -> BackstageConsole.Configuration {
    var configuration = BackstageConsole.Configuration()
    configuration.actions = ConsoleGuard { request in
        request.headers[.authorization] == "Bearer \(operatorToken)"
    }
    return configuration
}

@Suite("Article: web console")
struct ConsoleArticle {
    @Test("the console mounted as the article shows renders a stream with escaped names")
    func mounted() async throws {
        let app = BackstageApp(store: InMemoryEventStore(), router: try showRouter())
        try await app.dispatch(ScheduleShow(showID: "<script>", capacity: 2))
        let event = try await app.store.readStream("show-<script>", from: 1, direction: .forward, limit: 1)[0]
        let cell: HTML = "<td>\(event.stream)</td>"  // a stream named "<script>" prints as text
        #expect(cell.rendered == "<td>show-&lt;script&gt;</td>")
        let pipelines = try PipelineService(app: app)
        let application = Application(router: mountConsole(app: app, pipelines: pipelines))
        try await application.test(.router) { client in
            try await client.execute(uri: "/console", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body).contains("Box office"))
            }
        }
        _ = operatorGuard(operatorToken: "secret")
    }
}
