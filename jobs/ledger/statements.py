"""Server-side prepared statements, for the ledger's writes on the hot path."""

from __future__ import annotations

import re
import weakref

import psycopg2.errors
from django.db import DEFAULT_DB_ALIAS, connections


class Statement:
    """A server-side prepared statement, prepared once per database connection.

    The worker's hot path runs two statements per job; preparing them spares
    PostgreSQL parsing and planning each time, and executing them on the raw DB-API
    cursor spares Django's cursor wrapper. Errors still come out as Django's
    (`wrap_database_errors`), so callers catch what they always caught.

    A prepared statement's generic plan is made once, for the table as it was then,
    and kept: planned while the ledger was nearly empty, a lookup by id would be a
    sequential scan for the life of the connection, over however many rows the
    ledger grows to. So each EXECUTE runs with sequential scans disabled for its
    own implicit transaction (`SET LOCAL`, in the same round trip), and every plan
    made for it is an index plan. Inside a caller's transaction, where `SET LOCAL`
    would outlive the statement, a statement that looks rows up runs unprepared.
    On the worker's ledger session (jobs.ledger.session), whose whole session runs
    with the guard, the EXECUTE goes alone.
    """

    def __init__(self, name: str, types: str, sql: str, looks_up_rows: bool = True):
        self.name, self.types, self.sql, self.looks_up_rows = name, types, sql, looks_up_rows
        type_list = [t.strip() for t in types.split(",")]
        placeholders = ", ".join(["%s"] * len(type_list))
        self.execute_sql = f"EXECUTE {name}({placeholders})"  # on a guarded session
        self.guarded_sql = self.execute_sql
        if looks_up_rows:
            self.guarded_sql = f"SET LOCAL enable_seqscan = off; {self.execute_sql}"
        # The same statement with client-side parameters, planned where it runs.
        self.plain_sql = re.sub(
            r"\$(\d+)", lambda m: f"%(p{m.group(1)})s::{type_list[int(m.group(1)) - 1]}", sql
        )

    def fetchone(self, params: list, session=None) -> tuple:
        """Executes the statement with `params` and returns its first row: on Django's
        connection, or on `session` (a jobs.ledger.session.LedgerSession)."""
        if session is not None:
            db = session.connection()
            execute_sql = self.execute_sql
        else:
            db = connections[DEFAULT_DB_ALIAS]  # this thread's; `connection` looks it up per use
            db.close_if_health_check_failed()  # as Django's own cursors do
            db.ensure_connection()
            execute_sql = self.guarded_sql
        raw = db.connection  # the DB-API connection
        with db.wrap_database_errors:
            with raw.cursor() as cursor:
                autocommit = db.get_autocommit()
                if self.looks_up_rows and not autocommit:
                    cursor.execute(self.plain_sql, self.named(params))
                    return cursor.fetchone()
                names = _prepared.setdefault(raw, set())
                if self.name not in names:
                    self._prepare(cursor, names, autocommit)
                try:
                    cursor.execute(execute_sql, params)
                except psycopg2.errors.InvalidSqlStatementName:
                    # Deallocated behind our back (DISCARD ALL, a pooler handing out
                    # another server session): prepare again, and in autocommit retry.
                    names.discard(self.name)
                    if not autocommit:
                        raise
                    self._prepare(cursor, names, autocommit)
                    cursor.execute(execute_sql, params)
                return cursor.fetchone()

    @staticmethod
    def named(params: list) -> dict:
        """`params` as `plain_sql` takes them."""
        return {f"p{n}": value for n, value in enumerate(params, start=1)}

    def _prepare(self, cursor, names: set, autocommit: bool) -> None:
        # A new connection (or the first use of this one). PREPARE is not undone by
        # a rollback, so this happens once per connection.
        try:
            cursor.execute(f"PREPARE {self.name}({self.types}) AS {self.sql}")
        except psycopg2.errors.DuplicatePreparedStatement:
            # Prepared by an earlier call that was interrupted before it noted it.
            names.add(self.name)
            if not autocommit:
                raise  # the error has aborted the caller's transaction
            return
        names.add(self.name)


# Statement names prepared on each DB-API connection, forgotten with the connection.
# Keyed by the connection itself: Django gives each thread its own.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
