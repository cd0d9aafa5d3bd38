import Foundation
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Where a headless Chromium is: `BACKSTAGE_CHROMIUM` (scripts/test sets it from scripts/chromium),
/// else `chromium`, `chromium-browser` or `google-chrome` on PATH.
enum Chromium {
    static let path: String? = {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["BACKSTAGE_CHROMIUM"], FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        for folder in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            for name in ["chromium", "chromium-browser", "google-chrome"] {
                let candidate = "\(folder)/\(name)"
                if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            }
        }
        return nil
    }()

    /// In CI the browser test must run: a missing Chromium fails it instead of skipping it.
    static let required = ProcessInfo.processInfo.environment["CI"] == "true"
}

extension Trait where Self == ConditionTrait {
    static var needsChromium: Self {
        .enabled(
            if: Chromium.path != nil || Chromium.required,
            "no Chromium found: install it with scripts/chromium (Debian package chromium), or set BACKSTAGE_CHROMIUM")
    }
}

/// The real `box-office serve`, its console loaded in headless Chromium.
@Suite("Console in Chromium", .needsChromium)
struct ConsoleBrowserTests {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs `executable` with `arguments`, its stdout in `output`, and waits (at most `timeout`) for it to exit.
    func run(_ executable: String, _ arguments: [String], output: URL, timeout: Duration) async throws -> Int32 {
        let child = try ChildProcess(URL(fileURLWithPath: executable), arguments, output: output)
        guard let status = try await child.exitStatus(within: timeout) else {
            child.process.terminate()
            throw Failure(description: "\(executable) did not finish within \(timeout)")
        }
        return status
    }

    /// Sends a JSON command to the server and expects a 2xx answer.
    func post(_ server: ServeProcess, _ path: String, _ body: String) async throws {
        let status = try await server.post(path, body)
        guard (200..<300).contains(status) else { throw Failure(description: "POST \(path) answered \(status)") }
    }

    /// Where the screenshot goes: `BACKSTAGE_CONSOLE_SCREENSHOT`, else `console.png` in the
    /// package's `.build` folder (next to the build products).
    static func screenshotPath(executable: URL) -> String {
        if let path = ProcessInfo.processInfo.environment["BACKSTAGE_CONSOLE_SCREENSHOT"] { return path }
        var folder = executable.deletingLastPathComponent()
        while folder.path != "/" && folder.lastPathComponent != ".build" { folder.deleteLastPathComponent() }
        if folder.path == "/" { folder = executable.deletingLastPathComponent() }
        return folder.appendingPathComponent("console.png").path
    }

    @Test func theConsoleOfTheRealServerRendersInChromium() async throws {
        guard let chromium = Chromium.path else {
            throw Failure(description: "CI=true and no Chromium: scripts/chromium must install it")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("box-office-chromium-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        // The real server, on a free port.
        let executable = try ServeProcess.executable()
        let server = try await ServeProcess(
            ["--fail-every", "0", "--database", directory.appendingPathComponent("c.sqlite").path], in: directory)
        defer { server.child.stop() }
        let base = server.base

        // A show whose title is markup: the console must show it as text.
        try await post(server, "/shows", #"{"id": "gala", "title": "Gala <b>night</b>", "capacity": 3}"#)
        for ticket in ["a", "b", "c"] { try await post(server, "/shows/gala/tickets", #"{"ticketID": "\#(ticket)"}"#) }
        try await post(server, "/shows/gala/sell", #"{"buyer": "ada"}"#)

        let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
        let dom = directory.appendingPathComponent("dom.html")
        let status = try await run(
            chromium, flags + ["--dump-dom", "\(base)/console"], output: dom, timeout: .seconds(90))
        #expect(status == 0)
        let page = try String(contentsOf: dom, encoding: .utf8)
        #expect(page.contains("<title>Overview · Box office</title>"))
        #expect(page.contains("tickets@v1") && page.contains("seats@v1") && page.contains("receipts"))
        #expect(page.contains(">show-gala</a>"), "the latest events link to their stream")
        #expect(page.contains("TicketSold"))
        #expect(page.contains("Gala &lt;b&gt;night&lt;/b&gt;"), "the title, escaped")
        #expect(!page.contains("<b>night</b>"), "no markup from user data")
        #expect(!page.contains("The live tail needs JavaScript."), "the page's script ran")
        #expect(page.contains("live tail"))

        let aggregate = directory.appendingPathComponent("aggregate.html")
        #expect(
            try await run(
                chromium, flags + ["--dump-dom", "\(base)/console/aggregate?type=show&id=gala&version=2"],
                output: aggregate, timeout: .seconds(90)) == 0)
        let state = try String(contentsOf: aggregate, encoding: .utf8)
        #expect(state.contains("at version <b>2</b> of 5"))
        #expect(
            state.contains("\"capacity\" : 3") && state.contains("\"a\" : \"onSale\""),
            "the state at version 2, as JSON")
        #expect(!state.contains("\"b\" : \"onSale\""), "not ticket b, added at version 3")

        let screenshot = Self.screenshotPath(executable: executable)
        try? FileManager.default.removeItem(atPath: screenshot)
        #expect(
            try await run(
                chromium, flags + ["--window-size=1280,1100", "--screenshot=\(screenshot)", "\(base)/console"],
                output: directory.appendingPathComponent("shot.txt"), timeout: .seconds(90)) == 0)
        let png = try Data(contentsOf: URL(fileURLWithPath: screenshot))
        #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]), "a PNG at \(screenshot)")
        #expect(png.count > 10_000)
        print("console screenshot: \(screenshot)")

    }
}
