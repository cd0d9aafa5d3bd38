import BackstageTesting
import Foundation
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A process a test starts (the real `box-office serve`, a browser), its standard output in a
/// file; its exit is awaited with a deadline, never by blocking a thread.
final class ChildProcess {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let process = Process()
    /// Where its standard output goes.
    let output: URL
    private let exited = AsyncStream<Int32>.makeStream()

    /// Starts `executable` with `arguments`, its standard output in `output` (created empty).
    init(_ executable: URL, _ arguments: [String], output: URL) throws {
        self.output = output
        #expect(FileManager.default.createFile(atPath: output.path, contents: nil))
        process.executableURL = executable
        process.arguments = arguments
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = FileHandle.nullDevice
        let continuation = exited.continuation
        process.terminationHandler = { process in
            continuation.yield(process.terminationStatus)
            continuation.finish()
        }
        try process.run()
    }

    /// What it wrote to its standard output so far.
    var text: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }

    /// Its exit status, or nil when it is still running after `timeout`.
    func exitStatus(within timeout: Duration) async throws -> Int32? {
        let stream = exited.stream
        return try await withThrowingTaskGroup(of: Int32?.self) { group in
            group.addTask {
                for await status in stream { return status }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// Ends it with SIGINT if it still runs (a test's cleanup).
    func stop() {
        if process.isRunning { process.interrupt() }
    }
}

/// The real `box-office serve` on a free port, started by a test.
struct ServeProcess {
    let child: ChildProcess
    /// The port it listens on.
    let port: Int

    /// The `box-office` executable built next to this test binary.
    static func executable() throws -> URL { try testExecutable(named: "box-office") }

    /// Starts `box-office serve --port 0` with `arguments`, its standard output in `directory`,
    /// and waits (at most 60 s) for the port it prints.
    init(_ arguments: [String], in directory: URL) async throws {
        child = try ChildProcess(
            Self.executable(), ["serve", "--port", "0"] + arguments,
            output: directory.appendingPathComponent("serve-stdout.txt"))
        // Nothing to await across processes: poll with a deadline.
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            let text = child.text
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("listening on ") }),
                let port = line.split(separator: ":").last.flatMap({ Int($0) })
            {
                self.port = port
                return
            }
            guard child.process.isRunning, ContinuousClock.now < deadline else {
                child.stop()
                throw ChildProcess.Failure(description: "box-office serve did not start: \(text)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// `http://127.0.0.1:<port>`.
    var base: String { "http://127.0.0.1:\(port)" }

    /// Posts a JSON command, strongly consistent (the read models have it when the answer comes);
    /// returns the HTTP status.
    @discardableResult
    func post(_ path: String, _ body: String) async throws -> Int {
        var request = URLRequest(url: URL(string: base + path)!)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("strong", forHTTPHeaderField: "Consistency")
        request.httpBody = Data(body.utf8)
        let (_, response) = try await URLSession.shared.data(for: request)
        return (response as? HTTPURLResponse)?.statusCode ?? 0
    }

    /// Sends SIGTERM and returns the exit status, or nil when it still runs 20 s later (then it
    /// is interrupted).
    func terminate() async throws -> Int32? {
        child.process.terminate()
        let status = try await child.exitStatus(within: .seconds(20))
        if status == nil { child.stop() }
        return status
    }
}
