import Metrics

/// The store metrics of ``PostgresEventStore`` (names shared with the SQLite store):
/// `backstage.store.append.duration` (Timer, per append), `backstage.store.append.events`
/// (Recorder, events per append) and `backstage.store.commit.appends` (Recorder, appends per
/// transaction: the group-commit size), each with the dimension `store=postgres`.
final class PostgresStoreMetrics: Sendable {
    private let duration: Timer
    private let events: Recorder
    private let appendsPerCommit: Recorder

    init() {
        let dimensions = [("store", "postgres")]
        duration = Timer(label: "backstage.store.append.duration", dimensions: dimensions)
        events = Recorder(label: "backstage.store.append.events", dimensions: dimensions)
        appendsPerCommit = Recorder(label: "backstage.store.commit.appends", dimensions: dimensions)
    }

    func appended(events count: Int, duration elapsed: Duration) {
        events.record(count)
        duration.recordNanoseconds(elapsed.nanoseconds)
    }

    func committed(appends: Int) {
        appendsPerCommit.record(appends)
    }
}

extension Duration {
    fileprivate var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
