"""A test app's tasks written with Django's own task API (@task), run by the platform.

The cache invalidation job, converted: the same work as jobs.invalidate_cache.
"""

import asyncio

try:
    from django.tasks import task  # Django 6: code written to Django's own API
except ImportError:
    from django_tasks import task  # Django 5.2: the backport

from jobs import cache as job_cache
from jobs.errors import TransientJobError


@task(queue_name="cache", priority=50)
def invalidate_cache(keys: list[str] | None = None, namespace: str | None = None) -> str:
    job_cache.invalidate(keys or (), namespace)
    return f"invalidated {namespace or keys}"


@task()
def add(a: int, b: int) -> int:
    return a + b


@task()
def explode() -> None:
    raise ValueError("this Django task always fails")


@task(takes_context=True)
def flaky_until_third(context, marker: str) -> int:
    if context.attempt < 3:
        raise TransientJobError(f"attempt {context.attempt} of {marker} fails")
    return context.attempt


@task()
def returns_a_set() -> set:
    return {1, 2}


@task(takes_context=True)
async def async_add(context, a: int, b: int) -> dict:
    """A coroutine task: awaited on the worker's event loop, Django's async ORM inside."""
    from jobs.models import Job

    await asyncio.sleep(0.01)
    row = await Job.objects.aget(pk=context.task_result.id)
    return {"sum": a + b, "attempt": context.attempt, "state": row.state}
