import Backstage
import Foundation

/// Text and JSON renderings of the tool's results.
enum Format {
    /// `2026-12-01T20:02:41.617Z`.
    static func time(_ date: Date) -> String { timeFormatter.string(from: date) }

    /// One formatter for every date (making one per date was most of an export's time); Foundation's
    /// formatters are thread-safe once configured, and this one is never changed.
    nonisolated(unsafe) private static let timeFormatter: ISO8601DateFormatter = {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }()

    /// A duration in seconds, short: `0s`, `4.2s`, `3m 12s`, `5h 02m`, `3d 4h`.
    static func duration(_ seconds: Double) -> String {
        if seconds < 60 { return seconds < 10 ? String(format: "%.1fs", seconds) : "\(Int(seconds))s" }
        let s = Int(seconds)
        if s < 3600 { return "\(s / 60)m \(s % 60)s" }
        if s < 86400 { return String(format: "%dh %02dm", s / 3600, (s % 3600) / 60) }
        return "\(s / 86400)d \((s % 86400) / 3600)h"
    }

    /// Columns padded to their widest cell, two spaces apart.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            var text = ""
            for (i, cell) in cells.enumerated() {
                if i == cells.count - 1 {
                    text += cell
                } else {
                    text += cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) + "  "
                }
            }
            return text.trimmingTrailingSpaces() + "\n"
        }
        return line(header) + rows.map(line).joined()
    }

    /// Parses a position as printed by the tool: `POSITION` or `TRANSACTION:POSITION`.
    static func position(_ text: String) throws -> LogPosition {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 1, let position = Int64(parts[0]), position >= 0 {
            return LogPosition(position: position)
        }
        if parts.count == 2, let transaction = UInt64(parts[0]), let position = Int64(parts[1]), position >= 0 {
            return LogPosition(transaction: transaction, position: position)
        }
        throw ToolError("'\(text)' is not a log position (POSITION or TRANSACTION:POSITION, as the tool prints them)")
    }

    /// JSON text of a value built from dictionaries, arrays, strings and numbers; keys sorted.
    static func json(_ value: Any, pretty: Bool = false) -> String {
        var options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]
        if pretty { options.insert(.prettyPrinted) }
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: options) else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }

    /// The event's data as a JSON value (or its text, or base64, when it is not JSON).
    static func dataValue(_ data: Data) -> Any {
        if let value = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) { return value }
        if let text = String(data: data, encoding: .utf8) { return text }
        return data.base64EncodedString()
    }

    static func metadataValue(_ metadata: EventMetadata) -> [String: Any] {
        var value: [String: Any] = ["fields": metadata.fields]
        if let id = metadata.commandID { value["commandID"] = id.uuidString.lowercased() }
        if let id = metadata.causationID { value["causationID"] = id.uuidString.lowercased() }
        if let id = metadata.correlationID { value["correlationID"] = id.uuidString.lowercased() }
        return value
    }

    /// An event as a JSON object.
    static func eventValue(_ e: RecordedEvent) -> [String: Any] {
        [
            "position": e.logPosition.description, "stream": e.stream, "version": e.streamVersion,
            "id": e.id.uuidString.lowercased(), "type": e.type, "schemaVersion": e.schemaVersion,
            "recordedAt": time(e.recordedAt), "metadata": metadataValue(e.metadata), "data": dataValue(e.data),
        ]
    }

    /// An event pretty-printed: a header line, its metadata, its data indented.
    static func event(_ e: RecordedEvent) -> String {
        var text = "\(e.stream) @\(e.streamVersion)  \(e.type)"
        if e.schemaVersion != 1 { text += " (schema \(e.schemaVersion))" }
        text += "\n  position \(e.logPosition)  recorded \(time(e.recordedAt))  id \(e.id.uuidString.lowercased())\n"
        var ids: [String] = []
        if let id = e.metadata.commandID { ids.append("command \(id.uuidString.lowercased())") }
        if let id = e.metadata.causationID { ids.append("causation \(id.uuidString.lowercased())") }
        if let id = e.metadata.correlationID { ids.append("correlation \(id.uuidString.lowercased())") }
        if !ids.isEmpty { text += "  " + ids.joined(separator: "  ") + "\n" }
        for (key, value) in e.metadata.fields.sorted(by: { $0.key < $1.key }) { text += "  \(key): \(value)\n" }
        let data = json(dataValue(e.data), pretty: true)
        for line in data.split(separator: "\n", omittingEmptySubsequences: false) { text += "    \(line)\n" }
        return text
    }

    /// An event in one line (for `tail`): position, stream@version, type, data.
    static func eventLine(_ e: RecordedEvent) -> String {
        "\(e.logPosition)  \(time(e.recordedAt))  \(e.stream)@\(e.streamVersion)  \(e.type)  \(json(dataValue(e.data)))\n"
    }

    /// The CSV header of ``csvRow(_:)``.
    static let csvHeader =
        "position,stream,version,id,type,schema_version,recorded_at,command_id,causation_id,correlation_id,fields,data\n"

    /// An event as a CSV row (RFC 4180 quoting); `fields` and `data` are JSON text.
    static func csvRow(_ e: RecordedEvent) -> String {
        let cells: [String] = [
            e.logPosition.description, e.stream, String(e.streamVersion), e.id.uuidString.lowercased(), e.type,
            String(e.schemaVersion), time(e.recordedAt), e.metadata.commandID?.uuidString.lowercased() ?? "",
            e.metadata.causationID?.uuidString.lowercased() ?? "",
            e.metadata.correlationID?.uuidString.lowercased() ?? "",
            e.metadata.fields.isEmpty ? "" : json(e.metadata.fields), json(dataValue(e.data)),
        ]
        return cells.map(csvCell).joined(separator: ",") + "\n"
    }

    static func csvCell(_ text: String) -> String {
        if text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
            return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
        return text
    }
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}

/// Progress on standard error, only when it is a terminal; redrawn at most every 100 ms.
final class Progress {
    private let output: CommandOutput
    private var last = ContinuousClock.now - .seconds(1)
    private var shown = false

    init(_ output: CommandOutput) { self.output = output }

    func update(_ text: @autoclosure () -> String) {
        guard output.errorIsTerminal else { return }
        let now = ContinuousClock.now
        guard now - last >= .milliseconds(100) else { return }
        last = now
        output.error("\r\u{1B}[2K" + text())
        shown = true
    }

    func finish() {
        if shown { output.error("\r\u{1B}[2K") }
        shown = false
    }
}
