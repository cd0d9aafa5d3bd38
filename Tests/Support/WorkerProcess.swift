import Foundation

#if canImport(Glibc)
    import Glibc
#endif

// What every child process of the multi-process tests does the same way.

/// Prints one line to standard output in one unbuffered write, so a line the test reads was
/// complete when the worker printed it.
package func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Prints `message` to standard error with the worker's name and exits with status 2.
package func fail(_ message: String, worker: String) -> Never {
    FileHandle.standardError.write(Data("\(worker): \(message)\n".utf8))
    exit(2)
}

/// Exits (status 3) as soon as the process that started this one is gone, so a test killed
/// midway never leaves workers behind.
package func exitWithParent() {
    let parent = getppid()
    Thread.detachNewThread {
        while true {
            Thread.sleep(forTimeInterval: 0.5)
            if getppid() != parent { exit(3) }
        }
    }
}

/// Reads `handle` (a child process's output) to its end on a thread of its own, so a blocking
/// read never occupies one of the few threads of the concurrency pool: calls `line` with each
/// complete line, then `end`.
package func readLines(
    of handle: FileHandle, line: @escaping @Sendable (String) -> Void, end: @escaping @Sendable () -> Void = {}
) {
    Thread.detachNewThread {
        var buffer = Data()
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            buffer.append(chunk)
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                line(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...newline)
            }
        }
        end()
    }
}
