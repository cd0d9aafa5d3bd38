/// The table names of one version of a database projection (``Projection`` over SQLite or
/// PostgreSQL); only declared, checked names come out.
///
/// A read model declares base names (`tickets`); version `N` of its tables is `tickets_vN`, and
/// readers query the view `tickets`, which the projection points at the active version. See
/// the ProjectionTables article.
public struct ProjectionTables: Sendable, Hashable {
    /// The schema holding the tables (PostgreSQL), nil in SQLite.
    public let schema: String?
    /// The version.
    public let version: Int
    /// The declared base names.
    public let baseNames: [String]

    /// The names of `version` of the tables `baseNames`, in `schema` if given.
    package init(version: Int, baseNames: [String], schema: String? = nil) {
        self.schema = schema
        self.version = version
        self.baseNames = baseNames
    }

    /// The versioned name of the declared table `base`: `base_vN`, or `schema.base_vN`.
    /// - Throws: ``ProjectionError/undeclaredTable(_:)`` for a name the read model did not declare.
    public func table(_ base: String) throws(ProjectionError) -> String {
        guard baseNames.contains(base) else { throw .undeclaredTable(base) }
        return qualified("\(base)_v\(version)")
    }

    /// The name of the view readers use for `base`: `base`, or `schema.base`.
    /// - Throws: ``ProjectionError/undeclaredTable(_:)`` for a name the read model did not declare.
    public func view(_ base: String) throws(ProjectionError) -> String {
        guard baseNames.contains(base) else { throw .undeclaredTable(base) }
        return qualified(base)
    }

    private func qualified(_ name: String) -> String {
        schema.map { "\($0).\(name)" } ?? name
    }
}

/// Errors of database projections (SQLite and PostgreSQL).
public enum ProjectionError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A table name is not a plain identifier (1 to 48 characters of letters, digits and `_`,
    /// not starting with a digit; lower case on PostgreSQL).
    case invalidTableName(String)
    /// The read model wrote to a table it did not declare.
    case undeclaredTable(String)
    /// A name of the read model is taken by something that is not its view.
    case nameTaken(String)
    /// Another projection already declared this table in the same database (or schema): two
    /// read models must not share a table.
    case tableOwned(String, owner: String, projection: String)

    public var description: String {
        switch self {
        case .invalidTableName(let n):
            "table name '\(n)' is not allowed: use 1 to 48 characters of letters, digits and _ (lower case on PostgreSQL), not starting with a digit"
        case .undeclaredTable(let n): "table '\(n)' is not declared in the read model's `tables`"
        case .nameTaken(let n): "'\(n)' already exists and is not a projection view: rename the read model's table"
        case .tableOwned(let t, let owner, let projection):
            "projection '\(projection)' declares table '\(t)', which belongs to projection '\(owner)' in the same database: rename one of them"
        }
    }
}

/// Whether `name` may name a projection table: 1 to 48 characters of ASCII letters, digits and
/// `_`, not starting with a digit; with `lowercase`, no upper-case letters (PostgreSQL folds
/// unquoted names to lower case).
package func isTableIdentifier(_ name: String, lowercase: Bool) -> Bool {
    guard let first = name.utf8.first, name.utf8.count <= 48 else { return false }
    let isLetter = { (c: UInt8) in
        (c >= 0x61 && c <= 0x7A) || c == 0x5F || (!lowercase && c >= 0x41 && c <= 0x5A)
    }
    return isLetter(first) && name.utf8.allSatisfy { isLetter($0) || ($0 >= 0x30 && $0 <= 0x39) }
}
