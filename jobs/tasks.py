"""Jobs of the platform itself."""

import redis.exceptions

from jobs import cache as job_cache
from jobs.relay import relay_until_drained
from jobs.topology import Workload
from project.celery import app


@app.task(name="jobs.relay_pending_jobs")
def relay_pending_jobs() -> int:
    """Publishes due pending jobs; a backstop for the long-running relay."""
    return relay_until_drained()


@app.task(
    name="jobs.invalidate_cache",
    queue=Workload.CACHE,
    transient_errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
    max_retries=10,
    retry_backoff=0.5,
    retry_backoff_max=30.0,
    launchable=True,
)
def invalidate_cache(keys: list[str] | None = None, namespace: str | None = None) -> None:
    """Deletes cache keys and/or invalidates a cache namespace (jobs.cache)."""
    job_cache.invalidate(keys or (), namespace)
