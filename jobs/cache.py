"""Cache namespaces whose invalidation is a job, not a side effect of a request.

A namespace ("customer-invoices:42") has a version number kept in the cache; every
key built with `namespaced_key` embeds it. Invalidating the namespace bumps the
version, so every key of the old version is unreachable at once (and expires on its
own), without scanning Redis for keys.
"""

from __future__ import annotations

from django.core.cache import cache


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
