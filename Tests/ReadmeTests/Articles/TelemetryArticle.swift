// The code of the telemetry article (Backstage.docc/Telemetry.md).
import Backstage
import InMemoryTracing
import Logging
import Metrics
import Testing
import Tracing

/// The article's bootstrapping, with the backends as parameters (never called by the tests: it
/// bootstraps the whole process).
func bootstrapTelemetry<Factory: MetricsFactory, OTelTracer: Tracer>(
    myPrometheusFactory: Factory, myOTelTracer: OTelTracer, store: any EventStore, router: Router,
    receipts: any EventHandler, tickets: any Projection
) throws -> PipelineService {
    LoggingSystem.bootstrap(StreamLogHandler.standardOutput)
    MetricsSystem.bootstrap(myPrometheusFactory)  // e.g. swift-prometheus's PrometheusMetricsFactory
    InstrumentationSystem.bootstrap(myOTelTracer)  // e.g. swift-otel, with its W3C propagator

    // Create the app and the pipelines after bootstrapping: their metrics bind to the factory in
    // force when they are created.
    let app = BackstageApp(store: store, router: router)
    let pipelines = try PipelineService(app: app, handlers: [receipts], projections: [tickets])
    return pipelines
}

@Test("the telemetry article's in-memory tracer sees the dispatch span")
func telemetryArticleTracer() async throws {
    let tracer = InMemoryTracer()
    try await withTracer(tracer) {
        let app = BackstageApp(store: InMemoryEventStore(), router: try showRouter())
        try await app.dispatch(ScheduleShow(showID: "hamlet", capacity: 2))
    }
    #expect(tracer.finishedSpans.map(\.operationName).contains("dispatch ScheduleShow"))
}
