// Checks that the Swift code shown in the README and in the DocC articles is code this test
// target compiles: every ```swift block's lines must appear, in order, in one of the Swift files
// of Tests/ReadmeTests (the README's example and Articles/*.swift), so an article cannot show an
// API that does not compile. A block that is deliberately not Swift of this package (a shell
// session, a package manifest) uses another language tag (`sh`, `text`).
import Foundation
import Testing

@Suite("Code in the documentation compiles")
struct ArticleCodeTests {
    /// The repository's root, from this file's path.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The Markdown files whose Swift blocks are checked: the README and every DocC catalog's articles.
    static func documents() throws -> [URL] {
        var found = [root.appendingPathComponent("README.md")]
        let sources = root.appendingPathComponent("Sources")
        let enumerator = FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil)
        while let url = enumerator?.nextObject() as? URL {
            if url.pathExtension == "md", url.path.contains(".docc/") { found.append(url) }
        }
        return found.sorted { $0.path < $1.path }
    }

    /// The ```swift blocks of a Markdown text, with the line each starts at.
    static func swiftBlocks(_ text: String) -> [(line: Int, lines: [String])] {
        var blocks: [(line: Int, lines: [String])] = []
        var current: [String]?
        var start = 0
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if current == nil, trimmed == "```swift" {
                current = []
                start = index + 1
            } else if current != nil, trimmed == "```" {
                blocks.append((start, current!))
                current = nil
            } else if current != nil {
                current!.append(String(line))
            }
        }
        return blocks
    }

    /// Trimmed, non-empty lines, each run of spaces as one (so `swift format`'s spacing, e.g. before
    /// a line's trailing comment, does not matter).
    static func normalized(_ lines: [String]) -> [String] {
        lines.map { $0.split(whereSeparator: \.isWhitespace).joined(separator: " ") }.filter { !$0.isEmpty }
    }

    /// Whether `needle` is a subsequence of `haystack` (in order, gaps allowed).
    static func appearsInOrder(_ needle: [String], in haystack: [String]) -> Bool {
        var i = needle.startIndex
        for line in haystack where i < needle.endIndex && line == needle[i] { i += 1 }
        return i == needle.endIndex
    }

    @Test("every Swift block of the README and the articles is compiled by this target")
    func blocksAreCompiled() throws {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        var compiled: [[String]] = []
        let enumerator = FileManager.default.enumerator(at: here, includingPropertiesForKeys: nil)
        while let url = enumerator?.nextObject() as? URL {
            guard url.pathExtension == "swift", url.lastPathComponent != "ArticleCodeTests.swift" else { continue }
            compiled.append(Self.normalized(try String(contentsOf: url, encoding: .utf8).components(separatedBy: "\n")))
        }
        #expect(compiled.count >= 2)
        var checked = 0
        for document in try Self.documents() {
            let text = try String(contentsOf: document, encoding: .utf8)
            for block in Self.swiftBlocks(text) {
                let lines = Self.normalized(block.lines)
                checked += 1
                let found = compiled.contains { Self.appearsInOrder(lines, in: $0) }
                let name = document.path.replacingOccurrences(of: Self.root.path + "/", with: "")
                #expect(found, "\(name):\(block.line): this Swift block is not in Tests/ReadmeTests (compile it there)")
            }
        }
        #expect(checked >= 10, "expected the README and the articles to show Swift code")
    }

    @Test("the check finds a block that is not compiled")
    func checkCanFail() {
        let blocks = Self.swiftBlocks("text\n```swift\nlet x = 1\nlet y = 2\n```\n")
        #expect(blocks.count == 1)
        #expect(Self.appearsInOrder(Self.normalized(blocks[0].lines), in: ["let x = 1", "// gap", "let y = 2"]))
        #expect(!Self.appearsInOrder(Self.normalized(blocks[0].lines), in: ["let y = 2", "let x = 1"]))
    }
}
