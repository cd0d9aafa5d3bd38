import Backstage
import Logging
import PostgresNIO
import Synchronization

/// Partition indexes already created (or tried) by this process, by schema, key and count.
private let preparedPartitionIndexes = Mutex<Set<String>>([])

extension PostgresEventStore {
    /// The SQL condition selecting the events of `partition`, on the hash columns stored at append
    /// time (migration 4). Only integers are interpolated; the expression is the one the
    /// partition index is built on, so the index serves it.
    static func partitionPredicate(_ partition: EventPartition) -> String {
        "(\(partition.key.rawValue)_hash % \(max(partition.count, 1))) = \(partition.index)"
    }

    /// The index serving `count` partitions by `key`: `(hash % count, transaction_id, position)`.
    static func partitionIndexName(_ key: EventPartition.Key, count: Int) -> String {
        "events_\(key.rawValue)_partitions_\(count)"
    }

    /// Creates, once per process and schema, the index that serves reads of `partition`'s count
    /// (`CREATE INDEX CONCURRENTLY IF NOT EXISTS`: appends go on meanwhile). Best effort: reads
    /// are correct without it (they filter the log-order index), only slower.
    func preparePartitionIndex(_ partition: EventPartition) async {
        let count = max(partition.count, 1)
        let name = Self.partitionIndexName(partition.key, count: count)
        let key = "\(schema.rawValue).\(name)"
        let first = preparedPartitionIndexes.withLock { $0.insert(key).inserted }
        guard first else { return }
        let sql = """
            CREATE INDEX CONCURRENTLY IF NOT EXISTS \(name) ON \(s).events
            ((\(partition.key.rawValue)_hash % \(count)), transaction_id, position)
            """
        do {
            try await run { conn in _ = try await conn.query(PostgresQuery(unsafeSQL: sql), logger: self.queryLogger) }
        } catch {
            logger.warning(
                "could not create the partition index; partitioned reads filter the log instead",
                metadata: ["index": "\(name)", "error": "\(error)"])
        }
    }
}
