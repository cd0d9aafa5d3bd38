import Foundation
import GRDB
import GRDBSQLite

/// Binds the values of one execution of a cached GRDB statement straight through SQLite's C API,
/// for the append path, where GRDB's `StatementArguments` (an array of existential values,
/// converted, validated and bound inside nested closures on every execution) cost more than the
/// insert itself.
///
/// The statement still runs through GRDB (`execute()`, `fetchOne`), so GRDB sees every statement
/// (transaction observers, error reporting) as usual: ``prepare(_:)`` marks the statement's
/// arguments as set (empty), and the values bound here stay bound until the next ``prepare(_:)``.
/// Every value is copied by SQLite (`SQLITE_TRANSIENT`).
struct SQLiteBinder {
    let statement: Statement
    private let handle: OpaquePointer

    /// Resets `statement` (also after a failed step, whose error its caller already got) and
    /// clears its bindings, ready for the `bind` calls of one execution.
    init(_ statement: Statement) {
        self.statement = statement
        self.handle = statement.sqliteStatement
        // sqlite3_reset returns the error of a failed last step: already reported, ignored here,
        // so that GRDB's own reset in `setUncheckedArguments` succeeds.
        sqlite3_reset(handle)
        statement.setUncheckedArguments(StatementArguments())
    }

    /// `SQLITE_TRANSIENT`: SQLite copies the value before the bind call returns.
    private static var transient: sqlite3_destructor_type {
        unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)
    }

    /// Binds the 1-based parameter `index` to `value`.
    func bind(_ index: Int32, _ value: Int64) {
        sqlite3_bind_int64(handle, index, value)
    }

    func bind(_ index: Int32, _ value: Double) {
        sqlite3_bind_double(handle, index, value)
    }

    func bind(_ index: Int32, _ value: String) {
        var value = value
        value.withUTF8 { bytes in
            if let base = bytes.baseAddress {
                base.withMemoryRebound(to: CChar.self, capacity: bytes.count) {
                    _ = sqlite3_bind_text(handle, index, $0, Int32(bytes.count), Self.transient)
                }
            } else {
                // The empty string (a null pointer would bind NULL).
                sqlite3_bind_text(handle, index, "", 0, Self.transient)
            }
        }
    }

    func bind(_ index: Int32, _ value: String?) {
        if let value { bind(index, value) } else { sqlite3_bind_null(handle, index) }
    }

    /// Binds a UUID as GRDB stores it: a 16-byte blob.
    func bind(_ index: Int32, _ value: UUID) {
        withUnsafeBytes(of: value.uuid) { bytes in
            _ = sqlite3_bind_blob(handle, index, bytes.baseAddress, 16, Self.transient)
        }
    }

    func bind(_ index: Int32, _ value: UUID?) {
        if let value { bind(index, value) } else { sqlite3_bind_null(handle, index) }
    }

    /// Binds event data as ``SQLiteEventStore/storedData(_:)`` stores it: text when it is UTF-8
    /// without NUL bytes (JSON, which SQLite's JSON functions read), a blob otherwise.
    func bindStoredData(_ index: Int32, _ data: Data) {
        data.withUnsafeBytes { raw in
            let text = SQLiteEventStore.isStoredAsText(raw)
            guard let base = raw.baseAddress, raw.count > 0 else {
                // Empty data: the empty string is UTF-8 without NUL bytes.
                sqlite3_bind_text(handle, index, "", 0, Self.transient)
                return
            }
            if text {
                sqlite3_bind_text(
                    handle, index, base.assumingMemoryBound(to: CChar.self), Int32(raw.count), Self.transient)
            } else {
                sqlite3_bind_blob(handle, index, base, Int32(raw.count), Self.transient)
            }
        }
    }
}
