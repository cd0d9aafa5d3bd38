import Backstage

extension PostgresEventStore {
    /// Checkpoints and parked events in the store's schema and lease leadership
    /// (`PostgresCheckpointStore`, `PostgresParkedEventStore`, ``PostgresLeadership``): what a
    /// `PipelineService` over this store uses when not given others. Each access creates new
    /// objects over the same schema; a service reads it once, so each service has its own election.
    public var pipelineDefaults: PipelineDefaults {
        PipelineDefaults(
            checkpoints: PostgresCheckpointStore(store: self), parkedEvents: PostgresParkedEventStore(store: self),
            leadership: PostgresLeadership(store: self), supportsPartitions: true)
    }
}
