import Foundation

/// The checkpoint store, parked-event store and leader election that a store provides to the
/// pipelines reading it (``EventStore/pipelineDefaults``): what a ``PipelineService`` uses for
/// every argument it is not given.
///
/// Durable stores provide durable ones: `SQLiteEventStore` keeps checkpoints, parked events and
/// lease rows in its file; `PostgresEventStore` in its schema, with lease leadership. So a
/// restarted service resumes where it stopped, and a subscription has one active consumer
/// whichever number of processes run it.
public struct PipelineDefaults: Sendable {
    /// Where handlers keep their checkpoints.
    public var checkpoints: any CheckpointStore
    /// Where parked events go (for projections without a store of their own).
    public var parkedEvents: any ParkedEventStore
    /// Who leads each subscription.
    public var leadership: any LeaderElection
    /// Whether the store evaluates ``EventFilter/partition`` when it reads, so subscriptions with
    /// more than one partition can run over it (PostgreSQL and the in-memory store; not SQLite).
    public var supportsPartitions: Bool

    /// Creates a set of defaults.
    public init(
        checkpoints: any CheckpointStore, parkedEvents: any ParkedEventStore, leadership: any LeaderElection,
        supportsPartitions: Bool = false
    ) {
        self.checkpoints = checkpoints
        self.parkedEvents = parkedEvents
        self.leadership = leadership
        self.supportsPartitions = supportsPartitions
    }

    /// New in-memory checkpoints and parked events and single-process leadership: nothing
    /// survives the process, and every process runs every subscription. For the in-memory store
    /// and tests.
    public static func inMemory() -> PipelineDefaults {
        PipelineDefaults(
            checkpoints: InMemoryCheckpointStore(), parkedEvents: InMemoryParkedEventStore(),
            leadership: SingleProcessLeadership())
    }
}

extension EventStore {
    /// New in-memory pipeline stores and single-process leadership (``PipelineDefaults/inMemory()``).
    ///
    /// The fallback for stores that do not provide their own: such a store's handlers re-run from
    /// their start position after every restart, and run in every process. A durable store
    /// should return durable stores and a multi-process election here.
    public var pipelineDefaults: PipelineDefaults { .inMemory() }
}
