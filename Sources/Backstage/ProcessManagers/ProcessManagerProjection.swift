import Foundation

/// Runs a ``ProcessManager`` through the pipelines as a ``Projection``: one transaction per batch
/// holds the instances' new states, the commands the batch produced (in the outbox) and the
/// checkpoint compare-and-set, so a restart continues where the last batch committed, a
/// redelivered event never applies twice, and leadership fencing and failure policy are those of
/// every projection. A ``CommandScheduler`` dispatches the stored commands.
///
/// ```swift
/// let reservations = try ProcessManagerProjection(ReservationProcess(holdTime: .minutes(15)), store: processStore)
/// let pipelines = try PipelineService(app: app, projections: [reservations])
/// let scheduler = CommandScheduler(app: app, store: processStore, commands: catalog, processManagers: [reservations])
/// ```
public final class ProcessManagerProjection<Manager: ProcessManager>: Projection, CommandFailureHandling {
    /// The process manager.
    public let manager: Manager
    /// Where its instances, commands and checkpoints live.
    package let store: any ProcessStore
    private let codec: EventCodec<Manager.Family>

    /// Runs `manager` over `store`.
    /// - Throws: `PipelineError.invalidName` or the family's `CodecError`.
    public init(_ manager: Manager, store: any ProcessStore) throws {
        try validateSubscriptionName(manager.name)
        self.manager = manager
        self.store = store
        self.codec = try EventCodec<Manager.Family>.shared()
    }

    /// The process manager's name.
    public var name: String { manager.name }
    /// The family's type names.
    public var filter: EventFilter { codec.filter }
    /// The process manager's options; it is never awaited by strongly consistent dispatches.
    public var options: ProjectionOptions {
        var options = manager.options
        options.stronglyConsistent = false
        return options
    }
    /// The store's checkpoints.
    public var checkpoints: any CheckpointStore { store.checkpoints }
    /// The store's parked events.
    public var parkedEvents: (any ParkedEventStore)? { store.parkedEvents }

    /// Always version 1: a process manager is not rebuilt (it would dispatch its commands again).
    public func activeVersion() async throws -> Int { 1 }
    /// Nothing to create: the store's tables exist.
    public func prepare(version: Int) async throws {}
    /// Nothing to switch.
    public func activate(version: Int, replacing old: Int) async throws {}

    public func apply(_ events: [RecordedEvent], version: Int, commit: ProjectionCommit) async throws {
        // Decode and route outside the transaction; the transaction only loads, computes, writes.
        var routed: [(Envelope<Manager.Family>, ProcessRouting)] = []
        var keys = Set<String>()
        for event in events {
            guard let envelope = try codec.envelope(event, policy: manager.decodeFailure, subscription: manager.name)
            else { continue }
            let route = manager.route(envelope)
            switch route {
            case .start(let k), .continue(let k), .stop(let k): keys.insert(k)
            case .ignore: continue
            }
            routed.append((envelope, route))
        }
        guard !routed.isEmpty else {
            // Nothing for any instance: still commit the checkpoint with the (empty) changes.
            try await store.transact(process: manager.name, keys: [], commit: commit) { _ in ProcessChanges() }
            return
        }
        let manager = self.manager
        let items = routed
        try await store.transact(process: manager.name, keys: keys, commit: commit) { loaded in
            try Self.compute(manager, items, loaded: loaded)
        }
    }

    static func compute(
        _ manager: Manager, _ items: [(Envelope<Manager.Family>, ProcessRouting)], loaded: [String: Data]
    ) throws -> ProcessChanges {
        let decoder = JSONDecoder()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var states: [String: Manager.State] = [:]
        for (key, data) in loaded { states[key] = try decoder.decode(Manager.State.self, from: data) }
        var changes = ProcessChanges()
        var touched = Set<String>()
        for (envelope, route) in items {
            let key: String
            var stops = false
            switch route {
            case .start(let k):
                key = k
                if states[k] == nil { states[k] = manager.initialState }
            case .continue(let k):
                key = k
            case .stop(let k):
                key = k
                stops = true
            case .ignore:
                continue
            }
            guard var state = states[key] else { continue }
            let actions = try manager.handle(envelope, state: state)
            try Self.record(actions, for: envelope, process: manager.name, instance: key, into: &changes)
            manager.apply(envelope, to: &state)
            if stops {
                states[key] = nil
                changes.deletes.insert(key)
                touched.remove(key)
            } else {
                states[key] = state
                changes.deletes.remove(key)
                touched.insert(key)
            }
        }
        for key in touched { if let state = states[key] { changes.upserts[key] = try encoder.encode(state) } }
        return changes
    }

    /// Turns actions into outbox rows: deterministic ids from (process, event id, index).
    static func record(
        _ actions: [ProcessAction], for envelope: Envelope<Manager.Family>, process: String, instance: String,
        into changes: inout ProcessChanges
    ) throws {
        var index = 0
        for action in actions {
            switch action {
            case .cancel(let key):
                changes.commands.removeAll { $0.cancelKey == key }
                changes.cancels.append(key)
            case .dispatch(let command):
                changes.commands.append(
                    try outboxCommand(
                        command, process: process, instance: instance, event: envelope.recorded, index: index,
                        dueAt: immediateDueDate, key: nil))
                index += 1
            case .schedule(let command, let at, let key):
                let due: Date
                switch at {
                case .afterEvent(let delay): due = envelope.recordedAt.addingTimeInterval(delay.seconds)
                case .date(let date): due = date
                }
                changes.commands.append(
                    try outboxCommand(
                        command, process: process, instance: instance, event: envelope.recorded, index: index,
                        dueAt: due, key: key))
                index += 1
            }
        }
    }

    // MARK: Observing

    /// The running instances and their states, by key.
    public func instances() async throws -> [ProcessInstance<Manager.State>] {
        let decoder = JSONDecoder()
        return try await store.instances(process: manager.name).map {
            ProcessInstance(
                key: $0.key, state: try decoder.decode(Manager.State.self, from: $0.state), updatedAt: $0.updatedAt)
        }
    }

    /// The state of the instance `key`, if it runs.
    public func instance(_ key: String) async throws -> Manager.State? {
        try await instances().first { $0.key == key }?.state
    }

    /// Stops the instance `key` by hand: deletes it and its pending commands.
    public func stopInstance(_ key: String) async throws {
        try await store.deleteInstance(process: manager.name, key: key)
    }

    /// The process manager's choice for a failed command.
    public func commandFailed(_ failure: CommandFailure) -> CommandFailureAction {
        manager.commandFailed(failure)
    }
}

/// One running process instance.
public struct ProcessInstance<State: Sendable>: Sendable {
    /// The correlation key.
    public let key: String
    /// Its state.
    public let state: State
    /// When it last changed.
    public let updatedAt: Date
}

/// Decides what happens to a command of a process manager that failed to dispatch
/// (``ProcessManagerProjection`` conforms). A ``CommandScheduler`` asks the one named by the
/// command's ``OutboxCommand/process``.
public protocol CommandFailureHandling: Sendable {
    /// The process manager's name.
    var name: String { get }
    /// Retry, skip, or stop the instance.
    func commandFailed(_ failure: CommandFailure) -> CommandFailureAction
}

/// The due date of commands to dispatch at once (due whatever the scheduler's clock says).
package let immediateDueDate = Date(timeIntervalSince1970: 0)

/// The outbox row for `command`, caused by `event`: id derived from (process, event id, index),
/// correlation inherited from the event.
func outboxCommand(
    _ command: any Command & Encodable, process: String, instance: String, event: RecordedEvent, index: Int,
    dueAt: Date, key: String?
) throws -> OutboxCommand {
    OutboxCommand(
        id: deterministicCommandID(process: process, eventID: event.id, index: index), process: process,
        instance: instance, commandName: type(of: command).commandName, data: try encodeCommand(command),
        causationID: event.id, correlationID: event.metadata.correlationID ?? event.id, dueAt: dueAt, cancelKey: key,
        createdAt: event.recordedAt)
}

/// A command as JSON with sorted keys (deterministic byte for byte).
package func encodeCommand(_ command: any Command & Encodable) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    encoder.dateEncodingStrategy = .iso8601
    return try encoder.encode(command)
}

/// The id of the `index`th command a process manager produced for an event: a name-based UUID
/// (version 5, SHA-1) of `process`, the event id and the index, the same in every process and run.
public func deterministicCommandID(process: String, eventID: UUID, index: Int) -> UUID {
    deterministicUUIDv5(
        namespace: processCommandNamespace, name: "\(process)/\(eventID.uuidString.lowercased())/\(index)")
}

/// The namespace of process-manager command ids (a fixed, random UUID).
package let processCommandNamespace = UUID(uuidString: "5f0c3a52-8e1d-4b7a-9c36-2d4e6f8a1b0c")!

/// The name-based UUID (RFC 9562 version 5, SHA-1) of `name` in `namespace`.
package func deterministicUUIDv5(namespace: UUID, name: String) -> UUID {
    let ns = namespace.uuid
    var bytes: [UInt8] = [
        ns.0, ns.1, ns.2, ns.3, ns.4, ns.5, ns.6, ns.7, ns.8, ns.9, ns.10, ns.11, ns.12, ns.13, ns.14, ns.15,
    ]
    bytes.append(contentsOf: Array(name.utf8))
    var hash = SHA1.digest(bytes)
    hash[6] = (hash[6] & 0x0F) | 0x50
    hash[8] = (hash[8] & 0x3F) | 0x80
    return UUID(
        uuid: (
            hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7], hash[8], hash[9], hash[10],
            hash[11], hash[12], hash[13], hash[14], hash[15]
        ))
}

/// SHA-1, for name-based UUIDs only (not for security).
enum SHA1 {
    static func digest(_ message: [UInt8]) -> [UInt8] {
        var h: (UInt32, UInt32, UInt32, UInt32, UInt32) = (
            0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0
        )
        var data = message
        let bitLength = UInt64(message.count) * 8
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        for i in (0..<8).reversed() { data.append(UInt8(truncatingIfNeeded: bitLength >> (UInt64(i) * 8))) }
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                let b = chunk + i * 4
                w[i] =
                    UInt32(data[b]) << 24 | UInt32(data[b + 1]) << 16 | UInt32(data[b + 2]) << 8 | UInt32(data[b + 3])
            }
            for i in 16..<80 {
                let x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]
                w[i] = (x << 1) | (x >> 31)
            }
            var (a, b, c, d, e) = h
            for i in 0..<80 {
                let f: UInt32
                let k: UInt32
                switch i {
                case 0..<20: (f, k) = ((b & c) | (~b & d), 0x5A82_7999)
                case 20..<40: (f, k) = (b ^ c ^ d, 0x6ED9_EBA1)
                case 40..<60: (f, k) = ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                default: (f, k) = (b ^ c ^ d, 0xCA62_C1D6)
                }
                let temp = ((a << 5) | (a >> 27)) &+ f &+ e &+ k &+ w[i]
                e = d
                d = c
                c = (b << 30) | (b >> 2)
                b = a
                a = temp
            }
            h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e)
        }
        var out: [UInt8] = []
        for v in [h.0, h.1, h.2, h.3, h.4] {
            out += [
                UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8),
                UInt8(truncatingIfNeeded: v),
            ]
        }
        return out
    }
}

extension Duration {
    /// The duration in seconds.
    var seconds: TimeInterval {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
