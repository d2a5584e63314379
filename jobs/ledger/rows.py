"""Rows made and removed: a new job's INSERT, many jobs' COPY, a foreign message's row, pruning."""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import Iterable

from django.db import models, transaction
from django.db.models.base import ModelState
from django.utils import timezone

from jobs.ledger.statements import Statement
from jobs.models import Job, JobState


def job_factory(**fixed):
    """Returns build(**values) -> an unsaved Job holding `fixed` and `values`.

    Once per job on the worker's hot path and in enqueue_many, so built as unpickling
    builds a model (`Model.__reduce__`): a new instance whose attributes are set at
    once, without Model.__init__ (several times cheaper: docs/performance.md) and so
    without the pre_init and post_init signals, which nothing in the project listens
    to for Job. Every other field holds its default if that is a
    constant, else None (a computed default, such as created_at, would not be the
    row's).
    """
    fields = Job._meta.concrete_fields
    template = {
        f.attname: None if f.has_default() and callable(f.default) else f.get_default() for f in fields
    }
    unknown = set(fixed) - set(template)
    if unknown:
        raise TypeError(f"Job has no field(s) {sorted(unknown)}")
    template.update(fixed)
    new, names = Job.__new__, template.keys()

    def build(**values) -> Job:
        if not values.keys() <= names:
            raise TypeError(f"Job has no field(s) {sorted(values.keys() - names)}")
        job = new(Job)
        attributes = job.__dict__
        attributes.update(template)
        attributes.update(values)
        attributes["_state"] = ModelState()
        return job

    return build


# A new ledger row is written with these columns, by enqueue (one prepared INSERT)
# and by enqueue_many (COPY), not by Django's save: the rest of the row is NULL.
_NEW_ROW_COLUMNS = ("id", "task_name", "args", "kwargs", "queue", "priority", "run_after", "created_at", "key",
                    "unique_key", "soft_time_limit", "time_limit", "expires_at", "tags", "traceparent")  # fmt: skip
_NEW_ROW_CONSTANTS = {"state": JobState.PENDING.value, "attempts": 0, "retries": 0, "lost_runs": 0,
                      "last_error": "", "last_error_class": "", "last_traceback": "", "worker": "",
                      "cancel_requested_by": "", "progress_message": ""}  # fmt: skip
_TAGS = _NEW_ROW_COLUMNS.index("tags")
_ALL_NEW_ROW_COLUMNS = ", ".join([*_NEW_ROW_COLUMNS, *_NEW_ROW_CONSTANTS])


def _sql_literal(value) -> str:
    return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"


_INSERT_ROW = Statement(
    "jobs_insert_row",
    "uuid, text, jsonb, jsonb, text, integer, timestamptz, timestamptz, text, text, double precision, "
    "double precision, timestamptz, varchar[], varchar",
    f"INSERT INTO {Job._meta.db_table} ({_ALL_NEW_ROW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
    f"$11, $12, $13, $14, $15, "
    f"{', '.join(_sql_literal(v) for v in _NEW_ROW_CONSTANTS.values())}) RETURNING 1",
    looks_up_rows=False,  # an INSERT: no plan can go stale
)


def _new_row_values(job: Job, payload: tuple[str, str] | None = None) -> list:
    """The values of _NEW_ROW_COLUMNS for `job`, in that order; `payload` is the JSON
    of its args and kwargs if already made (by _check_payload)."""
    args_json, kwargs_json = payload or (json.dumps(job.args), json.dumps(job.kwargs))
    return [str(job.id), job.task_name, args_json, kwargs_json, job.queue, job.priority,
            job.run_after, job.created_at, job.key, job.unique_key, job.soft_time_limit, job.time_limit,
            job.expires_at, list(job.tags or ()), job.traceparent]  # fmt: skip


def record(job: Job) -> None:
    """Writes a new job's row (`pending`), in the caller's transaction."""
    # A prepared INSERT on the same connection (so in the caller's transaction), not
    # Django's save, which was a large part of an enqueue's own time (docs/performance.md).
    _INSERT_ROW.fetchone(_new_row_values(job))
    job._state.adding = False  # as after a save: the row exists now


def record_many(jobs: list[Job], payloads: list[tuple[str, str]]) -> None:
    """Writes new jobs' rows (`pending`) with one COPY; `payloads` holds each job's
    args and kwargs as JSON, already encoded."""
    # COPY, with the JSON already encoded: at bulk sizes Django's bulk_create spent
    # most of its time preparing fields row by row, and COPY beats a VALUES list.
    now = timezone.now()
    constants = list(_NEW_ROW_CONSTANTS.values())

    def rows():
        for job, payload in zip(jobs, payloads, strict=True):
            job.created_at = now
            job._state.adding = False
            values = _new_row_values(job, payload)
            # COPY reads an array as its literal, each element quoted (an unquoted `null`
            # would be NULL); a tag holds no comma, quote, backslash or brace (jobs.tags).
            values[_TAGS] = "{" + ",".join(f'"{tag}"' for tag in values[_TAGS]) + "}"
            yield [*values, *constants]  # None is written as "": see FORCE_NULL

    reader = _CsvReader(rows())
    with transaction.atomic(), transaction.get_connection().cursor() as cursor:
        try:
            cursor.cursor.copy_expert(
                f"COPY {Job._meta.db_table} ({_ALL_NEW_ROW_COLUMNS}) FROM STDIN "
                f"WITH (FORMAT csv, FORCE_NULL (run_after, key, soft_time_limit, time_limit, expires_at))",
                reader,
            )
        except Exception:
            if reader.error is not None:
                # psycopg2 turns an error raised in read() into a database error;
                # the caller must see the original (a soft time limit, say).
                raise reader.error from None
            raise


class _CsvReader:
    """Rows as a file for COPY FROM STDIN, formatted as psycopg2 reads them: the
    server parses and inserts the first rows while the next ones are formatted."""

    def __init__(self, rows: Iterable[list]):
        self._rows = iter(rows)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, quoting=csv.QUOTE_NONNUMERIC)  # "" is "", not NULL
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        try:
            for row in self._rows:
                self._writer.writerow(row)
                if 0 < size <= buffer.tell():
                    break
        except BaseException as exc:
            self.error = exc
            raise
        return buffer.getvalue()


def record_foreign(job_id: str, task_name: str, args, kwargs, queue: str, priority: int) -> Job:
    """The row of a job whose message the ledger never saw (from beat or `.delay()`):
    read, or written now as `queued`."""
    job, _ = Job.objects.get_or_create(
        pk=job_id,
        defaults={
            "task_name": task_name,
            "args": list(args),
            "kwargs": dict(kwargs),
            "queue": queue,
            "priority": priority,
            "state": JobState.QUEUED,
            "queued_at": timezone.now(),
        },
    )
    return job


def prune(
    older_than: datetime.timedelta,
    states: tuple[str, ...] = (JobState.SUCCEEDED, JobState.CANCELLED),
    batch_size: int = 10_000,
) -> int:
    """Deletes finished jobs created more than `older_than` ago, in batches; returns how many.

    Only `states` are pruned (by default succeeded and cancelled: dead jobs stay for
    operators until they are retried or pruned explicitly). Each batch is its own
    short transaction, so pruning a large ledger never holds long locks.
    """
    unknown = set(states) - set(JobState.values)
    if unknown:
        raise ValueError(f"Unknown job states {sorted(unknown)}; use some of {', '.join(JobState.values)}.")
    cutoff = timezone.now() - older_than
    table = Job._meta.db_table
    # Rows elsewhere that point at jobs (an invoice's last PDF job, an email's job, a
    # dead letter's job) keep their row and lose the link, as their on_delete says.
    references = [
        rel
        for rel in Job._meta.get_fields(include_hidden=True)
        if rel.auto_created and not rel.concrete and rel.one_to_many and rel.on_delete is models.SET_NULL
    ]
    total = 0
    while True:
        with transaction.atomic(), transaction.get_connection().cursor() as cursor:
            cursor.execute(
                f"SELECT id FROM {table} WHERE created_at < %s AND state = ANY(%s) LIMIT %s FOR UPDATE SKIP LOCKED",
                [cutoff, list(states), batch_size],
            )
            ids = [row[0] for row in cursor.fetchall()]
            for rel in references:
                rel.related_model._base_manager.filter(**{f"{rel.field.name}__in": ids}).update(
                    **{rel.field.name: None}
                )
            cursor.execute(f"DELETE FROM {table} WHERE id = ANY(%s::uuid[])", [[str(i) for i in ids]])
        total += len(ids)
        if len(ids) < batch_size:
            return total
