"""The platform's remote-control commands, registered by jobs.apps.JobsConfig.ready in
every process that loads the platform:

- `conf`, Celery's own replaced by one that masks every secret: Flower calls it on the
  workers to show their configuration to operators;
- `jobs_stop`, sent by `jobs.cancel` to stop a running job that ignores its checkpoints.
"""

import logging
import os
import signal
from collections.abc import Mapping

from celery.app.utils import HIDDEN_SETTINGS
from celery.utils.serialization import jsonify, strtobool
from celery.worker import state as worker_state
from celery.worker.control import control_command, inspect_command
from kombu.utils.encoding import safe_repr
from kombu.utils.url import maybe_sanitize_url

logger = logging.getLogger("jobs")


def _censor(value, key=""):
    """Masks secrets in a settings table: Celery's own filter misses namespaced keys.

    Celery censors `broker_url`, but with Django settings the key is CELERY_BROKER_URL,
    which it leaves as is (password included), and Flower shows it to every operator.
    Here every URL loses its password, whatever its key.
    """
    if isinstance(value, Mapping):
        return {k: _censor(v, str(k)) for k, v in value.items()}
    if HIDDEN_SETTINGS.search(key):
        return "********"
    if isinstance(value, str) and "://" in value:
        return maybe_sanitize_url(value, mask="********")
    return value


@inspect_command(alias="dump_conf", signature="[include_defaults=False]", args=[("with_defaults", strtobool)])
def conf(state, with_defaults=False, **kwargs):
    """List configuration, with every URL's password masked."""
    table = _censor(state.app.conf.table(with_defaults=with_defaults))
    return jsonify(
        table,
        keyfilter=lambda k: isinstance(k, str) and not k.startswith("__"),
        unknown_type_filter=safe_repr,
    )


@control_command(args=[("job_id", str), ("grace", float)], signature="<job_id> <grace>")
def jobs_stop(state, job_id, grace=10.0, **kwargs):
    """Stops the run of `job_id` in this worker if it has not stopped at a checkpoint
    within `grace` seconds (jobs.services.cancel sends it to every worker)."""
    for request in list(worker_state.active_requests):
        if request.id == job_id:
            state.consumer.timer.call_after(float(grace), _stop_if_running, (state, request))
            return {"ok": f"job {job_id} is stopped in {grace:g}s unless it ends first"}
    return {"ok": f"job {job_id} is not running here"}


def _stop_if_running(state, request) -> None:
    """Kills the pool process that still runs `request`'s job, then ends the job
    `cancelled` in the ledger.

    The kill is a plain SIGKILL, not Celery's terminate (which acknowledges the
    message): Celery sees a lost worker and puts the message back (acks late,
    task_reject_on_worker_lost), so nothing is acknowledged before the ledger says
    how the job ended. The copy that comes back finds the job cancelled (this write),
    or, should the write fail, asked to stop with its lease free, and the ledger ends
    it `cancelled` then (jobs.ledger.admit). Celery logs the lost worker and Flower
    shows the task failed (WorkerLostError); the ledger says cancelled."""
    if request not in worker_state.active_requests or not request.worker_pid:
        return
    logger.warning(
        "job=%s task=%s did not stop within its grace period; killing pool process %s",
        request.id, request.name, request.worker_pid,
    )  # fmt: skip
    from celery.concurrency.prefork import TaskPool

    if not isinstance(state.consumer.pool, TaskPool) or request.worker_pid == os.getpid():
        # A thread or a green pool runs the job in this very process.
        logger.warning(
            "job=%s this worker's pool cannot stop a running job; only its checkpoints can", request.id
        )
        return
    try:
        os.kill(request.worker_pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # it ended meanwhile
    from django.db import close_old_connections

    from jobs import ledger

    try:
        close_old_connections()  # this main process writes rarely: its connection may be stale
        if ledger.end_stopped_run(request.id):
            logger.warning("job=%s task=%s cancelled: its run was stopped", request.id, request.name)
    except Exception as exc:  # noqa: BLE001 - the event loop goes on; the copy that comes back ends it
        logger.warning("job=%s could not be marked cancelled yet (%s)", request.id, exc)
