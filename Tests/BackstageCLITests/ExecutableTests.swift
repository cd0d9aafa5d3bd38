import Backstage
import BackstageSQLite
import Foundation
import Testing

/// The `backstage` executable, built beside this test binary.
func backstageExecutable() throws -> URL {
    let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("backstage")
}

/// Standard output and error of a child process, read by threads of their own (a blocking read
/// must not occupy a thread of the concurrency pool).
final class ChildOutput: Sendable {
    private let out: AsyncStream<Data>
    private let err: AsyncStream<Data>
    private let lines: AsyncStream<String>

    init(_ process: Process) {
        let outPipe = Pipe()
        let errPipe = Pipe()
        process.standardOutput = outPipe
        process.standardError = errPipe
        let (lines, lineSink) = AsyncStream<String>.makeStream()
        self.lines = lines
        out = Self.collect(outPipe.fileHandleForReading, lines: lineSink)
        err = Self.collect(errPipe.fileHandleForReading, lines: nil)
    }

    private static func collect(_ handle: FileHandle, lines: AsyncStream<String>.Continuation?) -> AsyncStream<Data> {
        let (stream, done) = AsyncStream<Data>.makeStream(bufferingPolicy: .bufferingNewest(1))
        Thread {
            var all = Data()
            var pending = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                all.append(chunk)
                pending.append(chunk)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    lines?.yield(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            lines?.finish()
            done.yield(all)
            done.finish()
        }.start()
        return stream
    }

    func nextLine() async -> String? {
        for await line in lines { return line }
        return nil
    }

    func standardOutput() async -> String {
        for await data in out { return String(decoding: data, as: UTF8.self) }
        return ""
    }

    func standardError() async -> String {
        for await data in err { return String(decoding: data, as: UTF8.self) }
        return ""
    }
}

/// Waits for `process` to exit without blocking a thread of the pool.
func exited(_ process: Process) async -> Int32 {
    while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
    return process.terminationStatus
}

@Suite("backstage executable")
struct ExecutableTests {
    @Test("a missing file: one line on standard error, exit status 1, no file created")
    func missingFile() async throws {
        let missing = FileManager.default.temporaryDirectory.appendingPathComponent("backstage-\(UUID()).sqlite").path
        let process = Process()
        process.executableURL = try backstageExecutable()
        process.arguments = ["streams", "--store", "sqlite:\(missing)"]
        let output = ChildOutput(process)
        try process.run()
        let status = await exited(process)
        let err = await output.standardError()
        #expect(status == 1)
        #expect(err == "backstage: error: no such file: \(missing)\n")
        #expect(await output.standardOutput() == "")
        #expect(!FileManager.default.fileExists(atPath: missing))
    }

    @Test("tail follows appends of another process and ends cleanly on SIGINT")
    func tailUntilInterrupted() async throws {
        let prepared = try await PreparedStore()
        let process = Process()
        process.executableURL = try backstageExecutable()
        process.arguments = ["tail", "--store", prepared.path, "--from-start", "--interval", "20"]
        let output = ChildOutput(process)
        try process.run()
        // The five prepared events, then one appended now.
        var seen: [String] = []
        for _ in 0..<5 { if let line = await output.nextLine() { seen.append(line) } }
        #expect(seen.count == 5 && seen[0].contains("show-1@1  Scheduled"))
        let store = try SQLiteEventStore(path: prepared.path)
        _ = try await store.append(
            [EventData(type: "Refunded", data: Data(#"{"seat":"A1"}"#.utf8))], to: "show-1", expected: .any,
            commandID: nil)
        try await store.close()
        let next = await output.nextLine()
        #expect(next?.contains("show-1@4  Refunded") == true, "\(next ?? "nil")")
        kill(process.processIdentifier, SIGINT)
        let status = await exited(process)
        #expect(status == 0)
        #expect(await output.standardError() == "")
    }
}
