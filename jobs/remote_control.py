"""The platform's remote-control commands, registered by jobs.apps.JobsConfig.ready in
every process that loads the platform:

- `conf`, Celery's own replaced by one that masks every secret: Flower calls it on the
  workers to show their configuration to operators;
- `jobs_stop`, sent by `jobs.cancel` to stop a running job that ignores its checkpoints.
"""

import logging
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
    """Terminates the pool process that still runs `request`'s job, then ends the job
    `cancelled` in the ledger. Celery acknowledges a terminated task's message (and
    tells Flower it was revoked). Should the ledger write fail, the job reads `started`
    with no live lease: the next copy of it (the rescue sends one) finds it asked to
    stop, and the ledger ends it `cancelled` then (jobs.ledger.admit)."""
    if request not in worker_state.active_requests or not request.worker_pid:
        return
    logger.warning(
        "job=%s task=%s did not stop within its grace period; terminating pool process %s",
        request.id, request.name, request.worker_pid,
    )  # fmt: skip
    try:
        state.consumer.pool.terminate_job(request.worker_pid, signal.SIGKILL)
    except (NotImplementedError, AttributeError):
        logger.warning(
            "job=%s this worker's pool cannot stop a running job; only its checkpoints can", request.id
        )
        return
    from jobs import ledger

    try:
        if ledger.end_stopped_run(request.id):
            logger.warning("job=%s task=%s cancelled: its run was stopped", request.id, request.name)
    except Exception as exc:  # noqa: BLE001 - the event loop goes on; the ledger's next look ends it
        logger.warning("job=%s could not be marked cancelled yet (%s)", request.id, exc)
