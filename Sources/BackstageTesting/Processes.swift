import Foundation

extension Process {
    /// Waits until the process has exited and returns its termination status, without blocking a
    /// thread of Swift's cooperative pool.
    ///
    /// `waitUntilExit()` blocks the calling thread; the pool has one thread per core, so on a small
    /// machine a few tests waiting for child processes that way can starve the tasks that read the
    /// children's output, and a child blocked on a full pipe then never exits. This polls every
    /// 10 ms instead (and blocks only when the waiting task is cancelled).
    @discardableResult
    public func exited() async -> Int32 {
        while isRunning {
            do {
                try await Task.sleep(for: .milliseconds(10))
            } catch {
                break
            }
        }
        waitUntilExit()
        return terminationStatus
    }
}

/// Runs blocking work, such as reading a child process's pipe to its end, on a thread of its own
/// rather than on Swift's cooperative pool (see ``Foundation/Process/exited()``).
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}

/// The folder where SwiftPM put the products built with the running tests (`.build/debug`):
/// the executables of the package, such as worker programs for multi-process tests.
///
/// - Throws: ``ExecutableNotFound`` when the folder cannot be found.
public func testProductsDirectory() throws -> URL {
    #if os(Linux)
        guard let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else {
            throw ExecutableNotFound(path: "/proc/self/exe")
        }
        var folder = URL(fileURLWithPath: exe).deletingLastPathComponent()
    #else
        guard let bundle = Bundle.allBundles.first(where: { $0.bundlePath.hasSuffix(".xctest") }) else {
            throw ExecutableNotFound(path: Bundle.main.bundlePath)
        }
        var folder = bundle.bundleURL.deletingLastPathComponent()
    #endif
    // The test binary may sit inside `<Package>PackageTests.xctest` in the products folder.
    while folder.path.contains(".xctest") { folder.deleteLastPathComponent() }
    return folder
}

/// The executable product `name` built with the running tests (an `executableTarget` of the
/// package: a worker program that a multi-process test starts with `Process`).
///
/// ```swift
/// let process = Process()
/// process.executableURL = try testExecutable(named: "my-worker")
/// try process.run()
/// let status = await process.exited()
/// ```
///
/// - Throws: ``ExecutableNotFound`` when it was not built (a test target must depend on it, or
///   `swift build --build-tests` must have built it).
public func testExecutable(named name: String) throws -> URL {
    let url = try testProductsDirectory().appendingPathComponent(name)
    guard FileManager.default.isExecutableFile(atPath: url.path) else { throw ExecutableNotFound(path: url.path) }
    return url
}

/// An executable that tests need was not found where SwiftPM builds products.
public struct ExecutableNotFound: Error, Sendable, Hashable, CustomStringConvertible {
    /// Where it was looked for.
    public var path: String

    public var description: String { "no executable at \(path): build it first (swift build --build-tests)" }
}
