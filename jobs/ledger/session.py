"""The worker's own database session for leases and the hot path's two statements.

A job's lease is a session advisory lock (jobs.ledger.lease). On Django's connection
it would be the body's to lose: a task body that closes the connection, or one that
Django closes (CONN_MAX_AGE, a failed health check), would drop the lease of a job
still running. So each worker process (each thread, under a threaded pool) keeps a
second connection that only the ledger uses: it takes and gives back leases, and
runs the two prepared statements of every job's start and success.

Being the ledger's alone, the session's settings are the ledger's too: the planner
guard (`enable_seqscan = off`, jobs.ledger.statements) is set once when it connects,
not with each statement. The session is made after fork: a process that inherits
one from its parent (Celery's prefork pool forks after the main process may have
connected) leaves it untouched and connects anew, since closing it would end the
parent's session on the server.
"""

from __future__ import annotations

import copy
import os
import threading

from django.db import DEFAULT_DB_ALIAS, connections

_local = threading.local()
# Sessions inherited through fork, kept referenced: a psycopg2 connection that is
# garbage-collected says goodbye to the server, on the parent's socket.
_inherited: list = []


class LedgerSession:
    """A Django database wrapper of its own, on the default database's settings."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS):
        source = connections[alias]
        self.pid = os.getpid()
        # Under the source's alias: receivers of connection_created look the alias up in
        # Django's connections (django.contrib.postgres reads its type OIDs through it, once).
        self.db = source.__class__(copy.deepcopy(source.settings_dict), alias=alias)
        self.guarded = None  # the DB-API connection the guard was set on

    def connection(self):
        """The wrapper, connected, with the planner guard set on its session."""
        db = self.db
        raw = db.connection
        if raw is not None and raw.closed:
            self.close()  # psycopg2 saw it die: connect anew
        db.ensure_connection()
        raw = db.connection
        if raw is not self.guarded:
            with db.wrap_database_errors, raw.cursor() as cursor:
                cursor.execute("SET enable_seqscan = off")
            self.guarded = raw
        return db

    def close(self) -> None:
        self.guarded = None
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - a dead connection is what is being dropped
            self.db.connection = None


def ledger_session() -> LedgerSession:
    """This process's and thread's ledger session, made here if it has none."""
    session = getattr(_local, "session", None)
    if session is not None and session.pid != os.getpid():
        _inherited.append(session)
        session = None
    if session is None:
        session = _local.session = LedgerSession()
    return session


def close_ledger_session() -> None:
    """Closes this thread's ledger session, if it has one (its leases go with it)."""
    session = getattr(_local, "session", None)
    if session is not None and session.pid == os.getpid():
        session.close()
