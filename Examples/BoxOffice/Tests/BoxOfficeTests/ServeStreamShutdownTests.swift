import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An open server-sent-events connection must not hold `box-office serve` up at SIGTERM.
@Suite("box-office serve with open event streams")
struct ServeStreamShutdownTests {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// A TCP connection to 127.0.0.1:`port` that sends `request` and reads without blocking.
    final class Connection {
        let fd: Int32

        init(port: Int, request: String) throws {
            #if canImport(Glibc)
                fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            #else
                fd = socket(AF_INET, SOCK_STREAM, 0)
            #endif
            guard fd >= 0 else { throw Failure(description: "socket() failed") }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else { throw Failure(description: "connect() failed") }
            let bytes = Array(request.utf8)
            guard send(fd, bytes, bytes.count, 0) == bytes.count else { throw Failure(description: "send() failed") }
        }

        /// What has arrived so far (never waits).
        func available() -> String {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : ""
        }

        deinit { close(fd) }
    }

    @Test func sigtermEndsOpenEventStreamsAndExitsZero() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-sse-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await ServeProcess(
            ["--database", directory.appendingPathComponent("s.sqlite").path], in: directory)
        defer { server.child.stop() }
        let deadline = ContinuousClock.now + .seconds(60)

        // Two streams that never end by themselves: the API's and the console's.
        var streams: [Connection] = []
        for path in ["/events?after=0", "/console/tail"] {
            let connection = try Connection(
                port: server.port,
                request: "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            var received = ""
            while !received.contains(": backstage log after") {
                guard ContinuousClock.now < deadline else { throw Failure(description: "no stream from \(path)") }
                try await Task.sleep(for: .milliseconds(20))
                received += connection.available()
            }
            #expect(received.hasPrefix("HTTP/1.1 200"))
            #expect(received.lowercased().contains("content-type: text/event-stream"))
            streams.append(connection)
        }

        let sent = ContinuousClock.now
        guard let status = try await server.terminate() else {
            throw Failure(description: "box-office serve did not exit within 20 s of SIGTERM with open event streams")
        }
        #expect(status == 0)
        #expect(ContinuousClock.now - sent < .seconds(10))
        _ = streams
    }
}
