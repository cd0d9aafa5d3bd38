import Foundation

/// One partition of a partitioned subscription, as a store selects its events.
///
/// A subscription with ``HandlerOptions/partitions`` (or ``ProjectionOptions/partitions``) `N > 1`
/// runs as N subscriptions of their own, one per partition; partition `index` reads only the
/// events whose partition key hashes to `index` modulo `count`. The hash is the store's:
/// PostgreSQL stores it with each event at append time (so the selection runs in the database,
/// through an index), the in-memory store computes it when it reads. It is stable across restarts.
public struct EventPartition: Sendable, Hashable {
    /// What the events are partitioned by.
    public enum Key: String, Sendable, Hashable {
        /// The event's stream.
        case stream
        /// The stream's category.
        case category
    }

    /// The partition key.
    public var key: Key
    /// This partition, `0..<count`.
    public var index: Int
    /// The number of partitions.
    public var count: Int

    /// Creates a partition.
    public init(key: Key, index: Int, count: Int) {
        self.key = key
        self.index = index
        self.count = count
    }

    /// Whether the in-memory hash puts an event of `stream` in this partition (FNV-1a of the key's
    /// UTF-8 bytes). Stores with their own hash (PostgreSQL) do not use it.
    package func contains(stream: String) -> Bool {
        guard count > 1 else { return true }
        var hash = FNV1a()
        hash.add(key == .stream ? stream : streamCategory(stream))
        return Int(hash.value % UInt64(count)) == index
    }
}

/// The subscription id of partition `partition` of `count` of the subscription `base` (a
/// handler's name or `projection@vN`): `base#partition/count`, e.g. `receipts#2/8`.
///
/// Each partition is a subscription of its own: its own checkpoint, lease (with its own fencing
/// token) and parked events, all keyed by this id. With `count` 1 it is `base` itself.
package func partitionSubscription(_ base: String, partition: Int, of count: Int) -> String {
    count > 1 ? "\(base)#\(partition)/\(count)" : base
}

/// Splits a partition's subscription id (`base#p/N`) into its parts; nil for any other id.
package func parsePartitionSubscription(_ id: String) -> (base: String, partition: Int, count: Int)? {
    guard let hash = id.lastIndex(of: "#") else { return nil }
    let rest = id[id.index(after: hash)...]
    let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 2, let p = Int(parts[0]), let n = Int(parts[1]), n > 1, p >= 0, p < n else { return nil }
    return (String(id[..<hash]), p, n)
}

/// The partition key of a partitioned subscription, as a store can evaluate it.
func storePartitionKey(_ key: PartitionKey) -> EventPartition.Key? {
    switch key {
    case .stream: .stream
    case .category: .category
    case .custom: nil
    }
}

/// Who owns one partition of a partitioned subscription, and how far it is.
public struct PartitionStatus: Sendable, Hashable {
    /// The handler's or projection's name.
    public var name: String
    /// The partition's subscription id (`base#p/N`).
    public var subscription: String
    /// The partition, `0..<count`.
    public var partition: Int
    /// The number of partitions.
    public var count: Int
    /// The process that holds its lease (as the election names it), if any.
    public var owner: String?
    /// Whether this process runs it now.
    public var local: Bool
    /// The committed checkpoint.
    public var checkpoint: LogPosition?
    /// Events between the checkpoint and the head of the log (approximate: counts every event,
    /// not only the partition's).
    public var lagEvents: Int64
}

/// The committed position of version `version` of `projection`: its checkpoint, or for a
/// partitioned projection the lowest of its partitions' checkpoints (nil while one has none).
func committedProjectionPosition(_ projection: any Projection, version: Int) async throws -> LogPosition? {
    try await committedPosition(
        of: projectionSubscription(projection.name, version: version), partitions: projection.options.partitions,
        in: projection.checkpoints)
}

/// The committed position of the subscription `base`: its checkpoint, or with `partitions > 1`
/// the lowest of its partitions' checkpoints (nil while one has none). Every partition's
/// checkpoint is a position in the whole log (a partition's watermark moves to the head it
/// read), so the lowest one has every earlier event of every partition done.
public func committedPosition(of base: String, partitions: Int, in store: any CheckpointStore) async throws
    -> LogPosition?
{
    guard partitions > 1 else { return try await store.checkpoint(base)?.position }
    var lowest: LogPosition?
    for p in 0..<partitions {
        guard let c = try await store.checkpoint(partitionSubscription(base, partition: p, of: partitions)) else {
            return nil
        }
        lowest = min(lowest ?? c.position, c.position)
    }
    return lowest
}
