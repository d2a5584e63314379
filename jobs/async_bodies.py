"""`async def` job bodies: run on an event loop in the worker's pool process.

    @app.task(name="reports.fetch", bind=True)
    async def fetch(self, url: str) -> int:
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        await Report.objects.acreate(url=url, status=response.status_code)   # Django's async ORM
        return response.status_code

Everything around the body is the same as for any job (jobs.base.JobTask): the lease is
taken and the run started before the loop starts, and the run is ended after it stops,
by the same code, so retries, dead letters, the `on_dead` hook and tracing do not
know the difference. The loop runs in the pool process's own thread, so Celery's soft
time limit (a signal) interrupts the body as it would a plain one: the body's task is
cancelled, its `finally` blocks run, and the job ends `dead` with that reason; the
hard limit kills the process as for any job.

While the body runs, a watcher on the same loop reads the ledger every
JOBS_CANCEL_CHECK_SECONDS: once someone asks the job to stop (`jobs.cancel`), it
cancels the body's task, which sees asyncio.CancelledError at the `await` it is
in, and the job ends `cancelled`. The watcher also writes the body's `self.progress`
reports, so that a body's `self.progress()`, `self.cancel_requested()` and
`jobs.checkpoint()` never block the loop on the database.

Django's async ORM runs its queries in asgiref's thread for sync code, as under an
ASGI server; that thread's connections are checked before and after each body, as
Django's request handler does for a request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections

from jobs import ledger
from jobs.errors import JobCancelled

logger = logging.getLogger("jobs")


def run(task, args, kwargs):
    """Runs `task`'s coroutine body to its end on a new event loop; returns its result,
    or raises what it raised (JobCancelled once it was cancelled as asked). While it
    runs, the request says so (`_jobs_async_body`): the body's progress reports and
    cancel checks go through the watcher, off the loop."""
    request = task.request
    request._jobs_async_body = True
    try:
        return asyncio.run(_supervised(task, args, kwargs))
    finally:
        request._jobs_async_body = False


async def _supervised(task, args, kwargs):
    request = task.request
    job = request._jobs_run.job
    checked = sync_to_async(close_old_connections)
    await checked()
    body = asyncio.ensure_future(task.run(*args, **kwargs))
    watcher = asyncio.ensure_future(_watch(request, job, body))
    try:
        await asyncio.wait({body, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not body.done():
            # The watcher ended first: it cancelled the body as asked (None), or it
            # failed (a soft time limit's signal landed in it): the body must not outlive it.
            error = watcher.exception()
            if error is not None:
                body.cancel()
            await asyncio.wait({body})
            if error is not None:
                raise error
        if body.cancelled():
            raise JobCancelled(f"job {job.id} was cancelled while it awaited")
        return body.result()
    finally:
        watcher.cancel()
        await asyncio.wait({watcher})
        await checked()


async def _watch(request, job, body: asyncio.Future) -> None:
    """Until `body` ends: writes its pending progress report and looks whether the job
    was asked to stop, and cancels `body` then."""
    stop_requested = sync_to_async(ledger.stop_requested)
    record_progress = sync_to_async(ledger.record_progress)
    while not body.done():
        await asyncio.sleep(settings.JOBS_CANCEL_CHECK_SECONDS)
        try:
            report = getattr(request, "_jobs_progress_pending", None)
            written = getattr(request, "_jobs_progress_written", None)
            if report is not None and (
                written is None or time.monotonic() - written >= settings.JOBS_PROGRESS_SECONDS
            ):
                request._jobs_progress_written, request._jobs_progress_pending = time.monotonic(), None
                await record_progress(job.id, job.attempts, *report)
            asked = await stop_requested(job.id)
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("job=%s the ledger could not be read or written during its run (%s)", job.id, exc)
            continue
        request._jobs_cancel_seen = (time.monotonic(), asked)
        if asked and not body.done():
            body.cancel()
            return
