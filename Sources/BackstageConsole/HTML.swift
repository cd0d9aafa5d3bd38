import Foundation
import Hummingbird

/// A fragment of HTML whose interpolated strings are escaped.
///
/// String literals are markup written by the console itself; every interpolated `String` (and
/// anything else that is not ``HTML``) is escaped, so user data (stream names, event data,
/// error messages) can never become markup:
///
/// ```swift
/// let row: HTML = "<td>\(event.stream)</td>"   // "<script>" in a stream name prints as text
/// ```
public struct HTML: Sendable, Hashable, ExpressibleByStringInterpolation {
    /// The markup.
    public private(set) var rendered: String

    /// Markup taken as it is: only for text the console writes itself.
    public init(unsafeRaw: String) { rendered = unsafeRaw }

    /// A literal is markup.
    public init(stringLiteral value: String) { rendered = value }

    /// Builds markup from literals (kept) and interpolations (escaped, unless they are ``HTML``).
    public init(stringInterpolation: StringInterpolation) { rendered = stringInterpolation.output }

    /// No markup.
    public static let empty = HTML(unsafeRaw: "")

    /// Joins fragments.
    public static func + (a: HTML, b: HTML) -> HTML { HTML(unsafeRaw: a.rendered + b.rendered) }

    /// Appends a fragment.
    public static func += (a: inout HTML, b: HTML) { a.rendered += b.rendered }

    /// Interpolation: literals are kept, values escaped.
    public struct StringInterpolation: StringInterpolationProtocol {
        var output = ""

        /// Reserves room.
        public init(literalCapacity: Int, interpolationCount: Int) {
            output.reserveCapacity(literalCapacity + interpolationCount * 16)
        }

        /// Markup written by the console.
        public mutating func appendLiteral(_ literal: String) { output += literal }

        /// Text: escaped.
        public mutating func appendInterpolation(_ text: String) { output += escapeHTML(text) }

        /// A value's description: escaped.
        public mutating func appendInterpolation<T: CustomStringConvertible>(_ value: T) {
            output += escapeHTML(value.description)
        }

        /// An optional value: its description escaped, or nothing.
        public mutating func appendInterpolation<T: CustomStringConvertible>(_ value: T?) {
            if let value { output += escapeHTML(value.description) }
        }

        /// Markup: kept.
        public mutating func appendInterpolation(_ html: HTML) { output += html.rendered }

        /// Fragments: kept, one after the other.
        public mutating func appendInterpolation(_ parts: [HTML]) {
            for part in parts { output += part.rendered }
        }
    }
}

/// Escapes `&`, `<`, `>`, `"` and `'`, so `text` is safe in element content and in quoted attribute values.
public func escapeHTML(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out
}

/// A query-string value, percent-encoded (everything but unreserved characters).
func queryValue(_ value: String) -> String {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~")
    return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
}

/// A link target: `path?name=value&...` with the values percent-encoded (nil values left out).
func link(_ path: String, _ query: [(String, String?)] = []) -> String {
    let parts = query.compactMap { name, value in value.map { "\(name)=\(queryValue($0))" } }
    return parts.isEmpty ? path : path + "?" + parts.joined(separator: "&")
}

extension Response {
    /// An HTML page.
    static func html(_ page: HTML, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status,
            headers: [
                .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                .init("X-Content-Type-Options")!: "nosniff",
                .init("Content-Security-Policy")!:
                    "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'none'",
            ],
            body: ResponseBody(byteBuffer: ByteBuffer(string: page.rendered)))
    }

    /// A redirect after a form's POST (303: the browser follows it with a GET).
    static func seeOther(_ location: String) -> Response {
        Response(status: .seeOther, headers: [.location: location])
    }
}
