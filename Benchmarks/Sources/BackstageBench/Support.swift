import Foundation
import Synchronization

// MARK: Timing and concurrency

/// How long a piece of work took, in wall-clock and in CPU time of the whole process.
struct Timing {
    /// Wall-clock seconds.
    var seconds: Double
    /// CPU seconds (user + system, all threads).
    var cpu: Double

    /// How many cores the process kept busy on average; on a shared machine, fewer than the work
    /// could use means other processes took the rest.
    var cores: Double { cpu / seconds }

    /// For notes: "CPU 1.23 s = 0.85 cores".
    var text: String { String(format: "process CPU %.2f s, %.2f cores busy", cpu, cores) }
}

/// Runs `body` and returns how long it took.
func timed(_ body: () async throws -> Void) async rethrows -> Timing {
    let cpu = processCPUTime()
    let start = ContinuousClock.now
    try await body()
    return Timing(seconds: (ContinuousClock.now - start).seconds, cpu: processCPUTime() - cpu)
}

extension Duration {
    /// The duration in seconds, as a Double.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// A counter shared by concurrent callers to take the next piece of work.
final class WorkCounter: Sendable {
    private let next = Atomic<Int>(0)
    func take() -> Int { next.add(1, ordering: .relaxed).oldValue }
}

/// Runs `background` (a client's or a store's `run()`, a reader) as a child task beside `body`,
/// and cancels it when `body` returns or throws; returns once both have ended.
func withBackground<T: Sendable>(
    _ background: @escaping @Sendable () async throws -> Void, _ body: () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await background() }
        defer { group.cancelAll() }
        return try await body()
    }
}

/// Runs `count` calls of `body` (with indices 0..<count) from `callers` concurrent tasks; each
/// task takes the next index when it finishes one.
func concurrently(
    callers: Int, count: Int, _ body: @escaping @Sendable (Int) async throws -> Void
) async throws {
    let counter = WorkCounter()
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<max(callers, 1) {
            group.addTask {
                while true {
                    let i = counter.take()
                    if i >= count { return }
                    try await body(i)
                }
            }
        }
        try await group.waitForAll()
    }
}

/// CPU time (user + system, every thread) the process used so far, in seconds. On a shared
/// machine this tells the work a figure cost apart from the time other processes took.
func processCPUTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

// MARK: Memory (Linux /proc)

enum Memory {
    /// A field of /proc/self/status in bytes (VmRSS, VmHWM), nil where unavailable.
    static func status(_ field: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }

    /// Resident memory now.
    static var rss: Int? { status("VmRSS") }
    /// Peak resident memory since the start (or since ``resetPeak()``).
    static var peak: Int? { status("VmHWM") }

    /// Resets the peak resident memory (VmHWM) to the current RSS (Linux 4.0+). Returns false
    /// when the kernel refused.
    @discardableResult
    static func resetPeak() -> Bool {
        guard let handle = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? handle.close() }
        do {
            try handle.write(contentsOf: Data("5".utf8))
            return true
        } catch {
            return false
        }
    }

    static func mib(_ bytes: Int?) -> String {
        guard let bytes else { return "n/a" }
        return String(format: "%.1f MiB", Double(bytes) / 1_048_576)
    }
}

// MARK: Results

/// A target of the issue, checked against a figure or its ratio.
struct Target: Sendable {
    /// How the target reads, e.g. ">= 50% of ceiling".
    var text: String
    /// Whether a figure (and its ratio to the ceiling) meets it.
    var check: @Sendable (_ value: Double, _ ratio: Double?) -> Bool
    /// Whether it needs the ratio to the ceiling.
    var usesRatio = false

    static func ratio(atLeast r: Double) -> Target {
        Target(text: ">= \(Int(r * 100))% of ceiling", check: { _, ratio in (ratio ?? 0) >= r }, usesRatio: true)
    }
    static func aboveCeiling() -> Target {
        Target(text: "> ceiling", check: { _, ratio in (ratio ?? 0) > 1 }, usesRatio: true)
    }
    static func value(atLeast v: Double, _ unit: String) -> Target {
        Target(text: ">= \(Int(v)) \(unit)") { value, _ in value >= v }
    }
    static func all(_ targets: [Target]) -> Target {
        Target(
            text: targets.map(\.text).joined(separator: " and "),
            check: { value, ratio in targets.allSatisfy { $0.check(value, ratio) } },
            usesRatio: targets.contains { $0.usesRatio })
    }
}

/// One line of the results.
struct Figure: Codable, Sendable {
    var workload: String
    var store: String
    var value: Double
    var unit: String
    var ceiling: String?
    var ceilingValue: Double?
    var ratio: Double?
    var target: String?
    var targetMet: Bool?
    var note: String?
}

/// Everything one run measured.
struct Results: Codable, Sendable {
    struct Machine: Codable, Sendable {
        var cores: Int
        var memoryBytes: UInt64
        var os: String
        var hostname: String
    }
    var startedAt: Date
    var finishedAt: Date?
    var machine: Machine
    var arguments: [String]
    var settings: [String: String] = [:]
    var figures: [Figure] = []
    var notes: [String] = []
}

/// Collects figures and prints each one as it is measured.
final class Report: @unchecked Sendable {
    private(set) var results: Results
    private var ceilings: [String: Double] = [:]
    /// The target of each figure, by index, to check again when a ceiling changes.
    private var targets: [Target?] = []

    /// The ceiling `name` of `store` recorded last, if any.
    func ceilingValue(_ name: String, store: String) -> Double? { ceilings["\(store)/\(name)"] }

    init(arguments: [String]) {
        let info = ProcessInfo.processInfo
        results = Results(
            startedAt: Date(),
            machine: .init(
                cores: info.activeProcessorCount, memoryBytes: info.physicalMemory,
                os: info.operatingSystemVersionString, hostname: info.hostName),
            arguments: arguments)
    }

    func setting(_ key: String, _ value: String) { results.settings[key] = value }

    func note(_ text: String) {
        results.notes.append(text)
        print("  note: \(text)")
    }

    /// Records a ceiling figure; figures measured after it refer to it by `name` within `store`,
    /// so a ceiling measured again right before a workload is the one its ratio uses.
    func ceiling(_ name: String, store: String, value: Double, unit: String, label: String? = nil, note: String? = nil)
    {
        ceilings["\(store)/\(name)"] = value
        add(Figure(workload: "ceiling: \(label ?? name)", store: store, value: value, unit: unit, note: note))
    }

    /// Records a workload figure, with its ratio to `ceiling` (measured earlier for the same
    /// store) and whether it meets `target`.
    func figure(
        _ workload: String, store: String, value: Double, unit: String, ceiling: String? = nil,
        target: Target? = nil, note: String? = nil
    ) {
        let measured = ceiling.flatMap { ceilingValue($0, store: store) }
        let ratio = measured.map { value / $0 }
        add(
            Figure(
                workload: workload, store: store, value: value, unit: unit,
                ceiling: measured == nil ? nil : ceiling,
                ceilingValue: measured, ratio: ratio, target: target?.text,
                // No verdict on a ratio whose ceiling was not measured (--only without ceilings).
                targetMet: ratio == nil && target?.usesRatio == true ? nil : target.map { $0.check(value, ratio) },
                note: note),
            target: target)
    }

    private func add(_ figure: Figure, target: Target? = nil) {
        results.figures.append(figure)
        targets.append(target)
        print(Self.line(figure))
    }

    static let header = [
        pad("workload", 46), pad("store", 9), lpad("figure", 12), " ", pad("unit", 11), pad("ceiling", 20),
        lpad("ratio", 7), "  target",
    ].joined()

    static func line(_ f: Figure) -> String {
        var target = ""
        if let text = f.target, let met = f.targetMet { target = "\(met ? "met" : "MISSED"): \(text)" }
        var s = [
            pad(f.workload, 46), pad(f.store, 9), lpad(format(f.value), 12), " ", pad(f.unit, 11),
            pad(f.ceiling ?? "-", 20), lpad(f.ratio.map { String(format: "%.2f", $0) } ?? "-", 7), "  ", target,
        ].joined()
        if let note = f.note { s += "\n" + String(repeating: " ", count: 6) + "(\(note))" }
        return s
    }

    /// The whole table, for the end of the run.
    func table() -> String {
        ([Self.header, String(repeating: "-", count: Self.header.count + 30)]
            + results.figures.map(Self.line)).joined(separator: "\n")
    }

    func finish() { results.finishedAt = Date() }

    func write(json path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(
            at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try encoder.encode(results).write(to: url)
    }
}

func format(_ value: Double) -> String {
    if value >= 1000 { return String(format: "%.0f", value) }
    if value >= 10 { return String(format: "%.1f", value) }
    return String(format: "%.2f", value)
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

func lpad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}
