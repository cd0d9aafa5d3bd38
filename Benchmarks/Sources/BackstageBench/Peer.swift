import Foundation

/// The Python `eventsourcing` peer (Benchmarks/peer): run as a child process in the same run, so
/// Backstage's W1 and W2 figures get a ratio to it beside their ceilings.
enum Peer {
    /// One figure the peer printed: its store, workload and commands per second.
    struct Figure: Sendable {
        var store: String
        var workload: String
        var value: Double
    }

    /// Benchmarks/peer/run.sh next to this package.
    static var script: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("peer/run.sh")
    }

    /// Runs the peer on `stores` (sqlite, postgres) at `scale`, echoing its output, and returns its figures.
    static func run(stores: [String], scale: Double, directory: String?, only: String = "w1,w2") throws -> [Figure] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        var arguments = [script.path, "--stores", stores.joined(separator: ","), "--scale", "\(scale)", "--only", only]
        if let directory { arguments += ["--directory", directory] }
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        // A benchmark program: blocking this thread while the peer runs is fine.
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: output, as: UTF8.self)
        for line in text.split(separator: "\n") { print("  peer| \(line)") }
        guard process.terminationStatus == 0 else {
            throw PeerError(message: "Benchmarks/peer/run.sh exited with status \(process.terminationStatus)")
        }
        return parse(text)
    }

    /// Runs the peer on `store` for `only` and records its figures as the ceilings
    /// "python peer W1" and "python peer W2" of `report`. With `after`, the peer runs again
    /// after the figure it is compared with (named by `after`): the ceiling recorded then is
    /// both runs together (the commands of both over their time, so neither run weighs more),
    /// and the comparison covers the stretch of time before and after the figure.
    static func measure(
        store: String, only: String, scale: Double, directory: String?, report: Report, after: String? = nil
    ) throws {
        for figure in try run(stores: [store], scale: scale, directory: directory, only: only) {
            let name = figure.workload.hasPrefix("W1") ? "python peer W1" : "python peer W2"
            if let after, let before = report.ceilingValue(name, store: figure.store) {
                report.ceiling(
                    name, store: figure.store, value: 2 / (1 / before + 1 / figure.value), unit: "commands/s",
                    label: "python eventsourcing 9.5, \(figure.workload), runs before and after \(after)",
                    note:
                        "this run \(format(figure.value)) commands/s, the run before \(format(before)); the two together"
                )
            } else {
                report.ceiling(
                    name, store: figure.store, value: figure.value, unit: "commands/s",
                    label: "python eventsourcing 9.5, \(figure.workload)",
                    note: "Benchmarks/peer/run.sh right before the next figure, same sizes; synchronous=FULL on SQLite")
            }
        }
    }

    /// The figure lines of the peer's table (the same columns as backstage-bench's).
    static func parse(_ text: String) -> [Figure] {
        text.split(separator: "\n").compactMap { line -> Figure? in
            guard line.hasPrefix("W"), line.count > 67 else { return nil }
            let workload = String(line.prefix(46)).trimmingCharacters(in: .whitespaces)
            let rest = line.dropFirst(46)
            let store = String(rest.prefix(9)).trimmingCharacters(in: .whitespaces)
            guard let value = Double(String(rest.dropFirst(9).prefix(12)).trimmingCharacters(in: .whitespaces))
            else { return nil }
            return Figure(store: store, workload: workload, value: value)
        }
    }
}

struct PeerError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
