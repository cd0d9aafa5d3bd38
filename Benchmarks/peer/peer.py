#!/usr/bin/env python3
"""The Python `eventsourcing` library on the workloads of backstage-bench, printed in its format.

W1: one command per new aggregate (a new aggregate whose single event is saved), 1 caller.
W2: commands to one aggregate in sequence (repository with an aggregate cache).
SQLite with synchronous=FULL (WAL, the library's own journal mode) in a temporary folder; PostgreSQL
when BACKSTAGE_POSTGRES_URL is set. Run it through run.sh, which makes the venv.
"""
import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from urllib.parse import unquote, urlparse

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

MEMO = "benchmark payload " * 6
_counter = 0


def reference():
    global _counter
    _counter += 1
    return "ref-%d-benchmark-xx" % (_counter + 10_000_000_000_000_000)


class Account(Aggregate):
    @event("Opened")
    def __init__(self, account: str, amount: int, reference: str, memo: str):
        self.account = account
        self.balance = amount
        self.movements = 1

    @event("Deposited")
    def deposit(self, amount: int, reference: str, memo: str):
        self.balance += amount
        self.movements += 1

    @event("Withdrawn")
    def withdraw(self, amount: int, reference: str, memo: str):
        if self.balance < amount:
            raise ValueError("insufficient funds")
        self.balance -= amount
        self.movements += 1


class Accounts(Application):
    def open(self, name: str, amount: int):
        account = Account(account=name, amount=amount, reference=reference(), memo=MEMO)
        self.save(account)
        return account.id

    def deposit(self, account_id, amount: int):
        account = self.repository.get(account_id)
        account.deposit(amount=amount, reference=reference(), memo=MEMO)
        self.save(account)

    def withdraw(self, account_id, amount: int):
        account = self.repository.get(account_id)
        account.withdraw(amount=amount, reference=reference(), memo=MEMO)
        self.save(account)


def full_sync_sqlite():
    """Makes every connection of the library's SQLite pool use synchronous=FULL."""
    from eventsourcing import sqlite as es_sqlite

    original = es_sqlite.SQLiteConnectionPool._create_connection

    def create(self):
        connection = original(self)
        connection._sqlite_conn.execute("PRAGMA synchronous=FULL")
        return connection

    es_sqlite.SQLiteConnectionPool._create_connection = create


HEADER = "%-46s%-9s%12s %-11s%-20s%7s  %s" % ("workload", "store", "figure", "unit", "ceiling", "ratio", "target")


def fmt(value):
    if value >= 1000:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.2f" % value


def line(workload, store, value, unit, note):
    print("%-46s%-9s%12s %-11s%-20s%7s  " % (workload, store, fmt(value), unit, "-", "-"))
    print("      (%s)" % note, flush=True)


def run(store, env, w1, w2):
    app = Accounts(env=env)
    if w1:
        start = time.perf_counter()
        for i in range(w1):
            app.open("w1s%d" % i, 10)
        d = time.perf_counter() - start
        line("W1 many aggregates, 1 caller", store, w1 / d, "commands/s",
             "python eventsourcing 9.5: %d new aggregates, one event each, in sequence; %.2f s" % (w1, d))
    if not w2:
        app.close()
        return

    account = app.open("w2-plain", 10)
    start = time.perf_counter()
    for i in range(w2):
        if i % 4 == 3:
            app.withdraw(account, 5)
        else:
            app.deposit(account, 10)
    d = time.perf_counter() - start
    line("W2 long stream, cache, no snapshots", store, w2 / d, "commands/s",
         "python eventsourcing 9.5: %d commands to one aggregate in sequence, aggregate cache on; %.2f s" % (w2, d))
    app.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the sizes (W1 20,000, W2 10,000)")
    parser.add_argument("--directory", default=None, help="folder for the SQLite file (default: temporary)")
    parser.add_argument("--only", default="w1,w2", help="comma-separated workloads: w1, w2")
    args = parser.parse_args()
    only = [w.strip() for w in args.only.split(",")]
    w1 = max(1, int(20_000 * args.scale)) if "w1" in only else 0
    w2 = max(1, int(10_000 * args.scale)) if "w2" in only else 0
    stores = [s.strip() for s in args.stores.split(",")]
    print("Python eventsourcing peer: stores %s, scale %s" % (",".join(stores), args.scale))
    print(HEADER)
    base_env = {"AGGREGATE_CACHE_MAXSIZE": "10000", "IS_SNAPSHOTTING_ENABLED": "n"}
    if "sqlite" in stores:
        full_sync_sqlite()
        folder = tempfile.mkdtemp(prefix="backstage-peer-", dir=args.directory)
        try:
            env = dict(base_env, PERSISTENCE_MODULE="eventsourcing.sqlite",
                       SQLITE_DBNAME=os.path.join(folder, "peer.sqlite"), SQLITE_LOCK_TIMEOUT="10")
            path = env["SQLITE_DBNAME"]
            run("sqlite", env, w1, w2)
            with sqlite3.connect(path) as c:
                mode = c.execute("PRAGMA journal_mode").fetchone()[0]
            print("  note: sqlite peer file: journal_mode=%s, synchronous=FULL on every connection" % mode)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    url = os.environ.get("BACKSTAGE_POSTGRES_URL")
    if "postgres" in stores and url:
        u = urlparse(url)
        schema = "peer_%s" % uuid.uuid4().hex[:8]
        env = dict(base_env, PERSISTENCE_MODULE="eventsourcing.postgres",
                   POSTGRES_DBNAME=(u.path or "/postgres").lstrip("/") or "postgres",
                   POSTGRES_HOST=u.hostname or "localhost", POSTGRES_PORT=str(u.port or 5432),
                   POSTGRES_USER=unquote(u.username or "postgres"), POSTGRES_PASSWORD=unquote(u.password or ""),
                   POSTGRES_SCHEMA=schema)
        import psycopg
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE SCHEMA %s" % schema)
        try:
            run("postgres", env, w1, w2)
        finally:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("DROP SCHEMA %s CASCADE" % schema)
    elif "postgres" in stores:
        print("  note: BACKSTAGE_POSTGRES_URL is not set: PostgreSQL skipped")


if __name__ == "__main__":
    sys.exit(main())
