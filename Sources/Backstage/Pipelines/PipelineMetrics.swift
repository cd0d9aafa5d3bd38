import Foundation
import Metrics

/// Metrics of one subscription (swift-metrics), with the dimension `("subscription", name)`.
/// They bind to the metrics factory in force when the subscription starts running.
struct SubscriptionMetrics: Sendable {
    /// Events handled (counted when their batch succeeded).
    let handled: Counter
    /// Events per batch.
    let batchSize: Recorder
    /// How long a batch took in the handler or projection (successful batches).
    let batchDuration: Metrics.Timer
    let failures: Counter
    let retries: Counter
    let parked: Counter
    let skipped: Counter
    let readErrors: Counter
    /// Events between the head of the log and the committed checkpoint.
    let lagEvents: Gauge
    /// Age of the oldest event read and not yet completed, in seconds.
    let lagSeconds: Gauge

    init(subscription: String) {
        let dimensions = [("subscription", subscription)]
        handled = Counter(label: "backstage.subscription.events", dimensions: dimensions)
        batchSize = Recorder(label: "backstage.subscription.batch.size", dimensions: dimensions)
        batchDuration = Metrics.Timer(label: "backstage.subscription.batch.duration", dimensions: dimensions)
        failures = Counter(label: "backstage.subscription.failures", dimensions: dimensions)
        retries = Counter(label: "backstage.subscription.retries", dimensions: dimensions)
        parked = Counter(label: "backstage.subscription.parked", dimensions: dimensions)
        skipped = Counter(label: "backstage.subscription.skipped", dimensions: dimensions)
        readErrors = Counter(label: "backstage.subscription.read_errors", dimensions: dimensions)
        lagEvents = Gauge(label: "backstage.subscription.lag", dimensions: dimensions)
        lagSeconds = Gauge(label: "backstage.subscription.lag.seconds", dimensions: dimensions)
    }
}
