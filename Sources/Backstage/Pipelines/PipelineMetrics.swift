import Foundation
import Metrics

/// Metrics of one subscription (swift-metrics), labelled with its id.
struct SubscriptionMetrics: Sendable {
    let handled: Counter
    let batchSize: Recorder
    let latency: Metrics.Timer
    let failures: Counter
    let retries: Counter
    let parked: Counter
    let skipped: Counter
    let readErrors: Counter
    let lagEvents: Gauge
    let lagSeconds: Gauge

    init(subscription: String) {
        let dimensions = [("subscription", subscription)]
        handled = Counter(label: "backstage_pipeline_events_handled_total", dimensions: dimensions)
        batchSize = Recorder(label: "backstage_pipeline_batch_size", dimensions: dimensions)
        latency = Metrics.Timer(label: "backstage_pipeline_handler_duration_seconds", dimensions: dimensions)
        failures = Counter(label: "backstage_pipeline_handler_failures_total", dimensions: dimensions)
        retries = Counter(label: "backstage_pipeline_retries_total", dimensions: dimensions)
        parked = Counter(label: "backstage_pipeline_events_parked_total", dimensions: dimensions)
        skipped = Counter(label: "backstage_pipeline_events_skipped_total", dimensions: dimensions)
        readErrors = Counter(label: "backstage_pipeline_read_errors_total", dimensions: dimensions)
        lagEvents = Gauge(label: "backstage_pipeline_lag_events", dimensions: dimensions)
        lagSeconds = Gauge(label: "backstage_pipeline_lag_seconds", dimensions: dimensions)
    }
}
