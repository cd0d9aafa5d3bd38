-- Tests/Fixtures/evolution-v1.sqlite.sql: an SQLite event store written by an older box office (`sqlite3 FILE .dump`
-- of the file FixtureEvolutionSQLiteTests/writeFixture writes). Committed as text, loaded into a fresh file by the test.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE backstage_checkpoints (
    subscription TEXT PRIMARY KEY,
    txn INTEGER NOT NULL,
    position INTEGER NOT NULL,
    token INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE backstage_parked_events (
    subscription TEXT NOT NULL,
    txn INTEGER NOT NULL,
    position INTEGER NOT NULL,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    id BLOB NOT NULL,
    type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    data BLOB NOT NULL,
    metadata BLOB NOT NULL,
    recorded_at REAL NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    parked_at REAL NOT NULL,
    PRIMARY KEY (subscription, txn, position)
) WITHOUT ROWID;
CREATE TABLE backstage_projection_tables (
    base_name TEXT PRIMARY KEY,
    projection TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE backstage_leases (
    subscription TEXT PRIMARY KEY,
    token INTEGER NOT NULL,
    owner TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE backstage_projections (
    name TEXT PRIMARY KEY,
    active_version INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
INSERT INTO grdb_migrations VALUES('backstage-v1');
CREATE TABLE backstage_events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    category TEXT NOT NULL,
    version INTEGER NOT NULL,
    id BLOB NOT NULL UNIQUE,
    type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    data BLOB NOT NULL,
    command_id BLOB,
    causation_id BLOB,
    correlation_id BLOB,
    fields TEXT,
    recorded_at REAL NOT NULL,
    UNIQUE (stream, version)
);
INSERT INTO backstage_events VALUES(1,'show-s1','show',1,X'01a232e12099716abe02e1deced994e6','ShowScheduled',1,X'7b2273686f774944223a227331222c227469746c65223a2248616d6c6574227d',NULL,NULL,NULL,NULL,1796149944.4747018813);
INSERT INTO backstage_events VALUES(2,'show-s1','show',2,X'01a232e12099716b8cd76be81b8fbdd3','SeatSold',1,X'7b2273686f77223a227331222c2273656174223a224131227d',NULL,NULL,NULL,NULL,1796149944.4747018813);
INSERT INTO backstage_events VALUES(3,'show-s1','show',3,X'01a232e12099716cb391168c5ade0116','TicketSold',1,X'7b2273686f77223a227331222c2273656174223a224132227d',NULL,NULL,NULL,NULL,1796149944.4747018813);
INSERT INTO backstage_events VALUES(4,'show-s1','show',4,X'01a232e12099716db45785a520f56db0','TicketSold',2,X'7b2273686f774944223a227331222c227469636b65744944223a224133222c227072696365223a34307d',NULL,NULL,NULL,NULL,1796149944.4747018813);
CREATE TABLE backstage_commands (
    command_id BLOB PRIMARY KEY,
    stream TEXT NOT NULL,
    first_version INTEGER NOT NULL,
    last_version INTEGER NOT NULL,
    first_position INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE backstage_snapshots (
    stream TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    data BLOB NOT NULL,
    recorded_at REAL NOT NULL
) WITHOUT ROWID;
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('backstage_events',4);
CREATE INDEX backstage_events_type ON backstage_events (type, position);
CREATE INDEX backstage_events_category ON backstage_events (category, position);
CREATE TRIGGER backstage_events_no_update BEFORE UPDATE ON backstage_events
BEGIN SELECT RAISE(ABORT, 'backstage: events are immutable'); END;
CREATE TRIGGER backstage_events_no_delete BEFORE DELETE ON backstage_events
BEGIN SELECT RAISE(ABORT, 'backstage: events are immutable'); END;
COMMIT;
