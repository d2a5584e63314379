"""Cache namespaces whose invalidation is a job, not a side effect of a request.

A namespace ("customer-invoices:42") has a version number kept in the cache; every
key built with `namespaced_key` embeds it. Invalidating the namespace bumps the
version, so every key of the old version is unreachable at once (and expires on its
own), without scanning Redis for keys.
"""

from __future__ import annotations

import hashlib
import json

from django.core.cache import cache
from django.db import transaction


def _version_key(namespace: str) -> str:
    return f"ns:{namespace}:version"


def namespace_version(namespace: str) -> int:
    version = cache.get(_version_key(namespace))
    if version is None:
        # add() is atomic: two first readers agree on one starting version.
        cache.add(_version_key(namespace), 1, timeout=None)
        version = cache.get(_version_key(namespace), 1)
    return int(version)


def namespaced_key(namespace: str, key: str) -> str:
    """The cache key for `key` in the current version of `namespace`."""
    return f"{namespace}:v{namespace_version(namespace)}:{key}"


def invalidate(keys: list[str] | tuple[str, ...] = (), namespace: str | None = None) -> None:
    """Deletes `keys` and bumps `namespace`; raises the cache's error if Redis is down."""
    if keys:
        cache.delete_many(list(keys))
    if namespace:
        try:
            cache.incr(_version_key(namespace))
        except ValueError:
            # No version yet: nothing was cached under this namespace's first version,
            # but a reader may be about to cache it; start past that version.
            cache.add(_version_key(namespace), 2, timeout=None)


def invalidate_on_commit(*, namespace: str | None = None, keys: tuple[str, ...] = ()):
    """Enqueues jobs.invalidate_cache for `namespace`/`keys`, once per transaction.

    Returns the job. Saving an invoice and its ten lines in one transaction asks ten times; one job is
    enough. The job's idempotency key names the transaction (its PostgreSQL txid), so
    asking again in the same transaction returns the same job, while a savepoint that
    rolled the job back lets the next call enqueue it afresh.
    """
    from jobs.services import EnqueueError, enqueue
    from jobs.tasks import invalidate_cache

    if not keys and not namespace:
        raise EnqueueError("Name a cache namespace or keys to invalidate.")
    key = None
    if transaction.get_connection().in_atomic_block:
        with transaction.get_connection().cursor() as cursor:
            cursor.execute("SELECT txid_current()")
            txid = cursor.fetchone()[0]
        target = hashlib.sha256(json.dumps([namespace, sorted(keys)]).encode()).hexdigest()[:32]
        key = f"cache-invalidation:{txid}:{target}"
    return enqueue(invalidate_cache, keys=list(keys), namespace=namespace, key=key)
