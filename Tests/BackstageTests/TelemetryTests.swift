import Backstage
import BackstageTestSupport
import Foundation
import InMemoryTracing
import Metrics
import MetricsTestKit
import Testing
import Tracing

// The tracer and the metrics factory are bound to each test's task (`withTracer`,
// `withMetricsFactory`), so tests running in parallel do not see each other's spans and metrics.

@Suite("Telemetry")
struct TelemetryTests {
    @Test("one trace runs from the request through dispatch, decide and append to every handler and projection")
    func oneTraceFromRequestToReadModels() async throws {
        let tracer = InMemoryTracer()
        try await withTracer(tracer) {
            let store = InMemoryEventStore()
            let app = try makeApp(store)
            let seenInHandler = PipeBox([String]())
            let handler = ClosureHandler(name: "traced-handler") { _ in
                seenInHandler.with { $0.append(ServiceContext.current?.inMemorySpanContext?.traceID ?? "none") }
            }
            let totals = try InMemoryProjection(name: "traced-totals", consuming: AccountEvent.self, initial: 0) {
                count, _ in count += 1
            }
            let service = try PipelineService(app: app, handlers: [handler], projections: [totals])
            let running = RunningService(service)
            let requestTrace = try await withSpan("POST /accounts") { span in
                try await app.dispatch(OpenAccount(id: "traced", owner: "Ana"))
                return try #require(span.context.inMemorySpanContext?.traceID)
            }
            try await service.waitUntilProcessed()
            try await running.stop()

            let spans = tracer.finishedSpans
            func span(_ name: String) -> FinishedInMemorySpan? { spans.first { $0.operationName == name } }
            let names = spans.map(\.operationName)
            let request = try #require(span("POST /accounts"), "\(names)")
            let dispatch = try #require(span("dispatch OpenAccount"), "\(names)")
            let decide = try #require(span("decide OpenAccount"), "\(names)")
            let append = try #require(span("append account"), "\(names)")
            #expect(dispatch.traceID == requestTrace && dispatch.parentSpanID == request.spanID)
            #expect(decide.parentSpanID == dispatch.spanID && append.parentSpanID == dispatch.spanID)
            #expect(dispatch.attributes.get("backstage.command") == .string("OpenAccount"))
            #expect(dispatch.attributes.get("backstage.category") == .string("account"))
            #expect(append.attributes.get("backstage.events") == .int64(1))

            // The dispatch span's context is stored with the events...
            let stored = try await store.readStream("account-traced", from: 1, direction: .forward, limit: 10)
            #expect(stored[0].metadata.fields[InMemoryTracer.traceIDKey] == requestTrace)
            #expect(stored[0].metadata.fields[InMemoryTracer.spanIDKey] == dispatch.spanID)

            // ...and restored for the handler and the projection: same trace, child of the dispatch.
            let handled = try #require(span("handle traced-handler"), "\(names)")
            let projected = try #require(spans.first { $0.operationName.hasPrefix("project traced-totals") })
            for consumer in [handled, projected] {
                #expect(consumer.traceID == requestTrace, "\(consumer.operationName)")
                #expect(consumer.parentSpanID == dispatch.spanID, "\(consumer.operationName)")
                #expect(consumer.kind == .consumer)
            }
            #expect(handled.attributes.get("backstage.subscription") == .string("traced-handler"))
            // The handler ran inside its span: its own spans and logs join the trace.
            #expect(seenInHandler.value == [requestTrace])
        }
    }

    @Test("a batch of events from several requests is parented to the first and links to the others")
    func batchesLinkEveryRequest() async throws {
        let tracer = InMemoryTracer()
        try await withTracer(tracer) {
            let store = InMemoryEventStore()
            let app = try makeApp(store)
            var traces: [String] = []
            for i in 0..<3 {
                traces.append(
                    try await withSpan("request \(i)") { span in
                        try await app.dispatch(OpenAccount(id: "batch-\(i)", owner: "Ana"))
                        return try #require(span.context.inMemorySpanContext?.traceID)
                    })
            }
            var options = HandlerOptions(concurrency: 1, batchSize: 10, batchTimeout: .milliseconds(20))
            options.checkpointInterval = .milliseconds(1)
            let handler = ClosureHandler(name: "batched", options: options) { _ in }
            let service = try PipelineService(store: store, handlers: [handler])
            let running = RunningService(service)
            try await service.waitUntilProcessed()
            try await running.stop()

            let batches = tracer.finishedSpans.filter { $0.operationName == "handle batched" }
            #expect(!batches.isEmpty)
            var reached: [String] = []
            for batch in batches {
                guard case .int64(let size) = batch.attributes.get("backstage.batch.size") else {
                    Issue.record("no batch size on \(batch.operationName)")
                    continue
                }
                // Every event carried its request's context: one parent plus one link per other event.
                #expect(batch.links.count == Int(size) - 1)
                reached.append(batch.traceID)
                reached += batch.links.compactMap { $0.context.inMemorySpanContext?.traceID }
            }
            #expect(Set(reached) == Set(traces))
        }
    }

    @Test("dispatch metrics carry the command, the category and the outcome")
    func dispatchMetrics() async throws {
        let metrics = TestMetrics()
        try await withMetricsFactory(metrics) {
            let app = try makeApp(InMemoryEventStore())
            try await app.dispatch(OpenAccount(id: "m", owner: "Ana"))
            try await app.dispatch(Deposit(id: "m", amount: 5, times: 2))
            _ = try await app.attempt(Withdraw(id: "m", amount: 50))  // rejected by the aggregate
            _ = try? await app.dispatch(Deposit(id: "m", amount: 0))  // rejected by validation: failed
            func dims(_ command: String, _ outcome: String? = nil) -> [(String, String)] {
                [("command", command), ("category", "account")] + (outcome.map { [("outcome", $0)] } ?? [])
            }
            #expect(try metrics.expectCounter("backstage.commands", dims("OpenAccount", "success")).totalValue == 1)
            #expect(try metrics.expectCounter("backstage.commands", dims("Deposit", "success")).totalValue == 1)
            #expect(try metrics.expectCounter("backstage.commands", dims("Withdraw", "rejected")).totalValue == 1)
            #expect(try metrics.expectCounter("backstage.commands", dims("Deposit", "failed")).totalValue == 1)
            #expect(try metrics.expectCounter("backstage.commands", dims("Withdraw", "success")).totalValue == 0)
            #expect(
                try metrics.expectTimer("backstage.command.duration", dims("Withdraw", "rejected")).values.count == 1)
            #expect(
                try metrics.expectTimer("backstage.command.duration", dims("OpenAccount", "success")).values.count == 1)
            #expect(try metrics.expectCounter("backstage.command.events", dims("Deposit")).totalValue == 2)
            #expect(try metrics.expectCounter("backstage.command.events", dims("OpenAccount")).totalValue == 1)
        }
    }

    @Test("subscription metrics: batch duration, events handled and the lag gauge")
    func subscriptionMetrics() async throws {
        let metrics = TestMetrics()
        try await withMetricsFactory(metrics) {
            let store = InMemoryEventStore()
            let app = try makeApp(store)
            for i in 0..<4 { try await app.dispatch(OpenAccount(id: "s\(i)", owner: "Ana")) }
            var options = HandlerOptions()
            options.checkpointInterval = .milliseconds(1)
            let handler = ClosureHandler(name: "metered", options: options) { _ in }
            let service = try PipelineService(store: store, handlers: [handler])
            let running = RunningService(service)
            try await service.waitUntilProcessed()
            try await running.stop()
            let subscription = [("subscription", "metered")]
            #expect(try metrics.expectCounter("backstage.subscription.events", subscription).totalValue == 4)
            let durations = try metrics.expectTimer("backstage.subscription.batch.duration", subscription).values
            #expect(!durations.isEmpty)
            let sizes = try metrics.expectRecorder("backstage.subscription.batch.size", subscription).values
            #expect(sizes.reduce(0, +) == 4)
            #expect(try metrics.expectGauge("backstage.subscription.lag", subscription).lastValue == 0)
        }
    }

    @Test("no tracer bootstrapped: events carry no trace fields")
    func noTracerNoFields() async throws {
        let store = InMemoryEventStore()
        let app = try makeApp(store)
        try await app.dispatch(OpenAccount(id: "untraced", owner: "Ana"), options: DispatchOptions(fields: ["k": "v"]))
        let stored = try await store.readStream("account-untraced", from: 1, direction: .forward, limit: 1)
        #expect(stored[0].metadata.fields == ["k": "v"])
    }
}
