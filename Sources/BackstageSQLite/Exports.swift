/// SQLite read models write through GRDB's `Database`: importing BackstageSQLite imports GRDB.
@_exported import GRDB
