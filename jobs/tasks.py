"""Jobs of the platform itself."""

import redis.exceptions
from celery import shared_task

from jobs import cache as job_cache
from jobs.topology import Workload


@shared_task(
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
