"""Rate limits that hold across every worker, counted in Redis.

Celery's own `rate_limit` counts per worker process; these count per task or per
queue for the whole fleet. A fixed window per period: the first `limit` jobs of a
window run, the rest are sent again for the next window (delayed, never failed).
"""

from __future__ import annotations

import functools
import logging
import random
import time

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

_PERIODS = {"s": 1, "m": 60, "h": 3600}


def parse_rate(rate: str) -> tuple[int, int]:
    """'10/s' -> (10, 1); '300/m' -> (300, 60). Raises ValueError with the accepted forms."""
    try:
        count, unit = rate.strip().split("/")
        limit, period = int(count), _PERIODS[unit.strip().lower()[0]]
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"Rate {rate!r} is not N/s, N/m or N/h.") from None
    if limit < 1:
        raise ValueError(f"Rate {rate!r} must allow at least one job per period.")
    return limit, period


@functools.cache
def _client() -> redis.Redis:
    url = settings.JOBS_REDIS_URL or getattr(settings, "REDIS_URL", None) or "redis://127.0.0.1:6379/0"
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


def seconds_until_allowed(name: str, rate: str) -> float:
    """Takes a slot of `name`'s rate; returns 0 if granted, else how long to wait.

    Fails open: if Redis cannot be reached the job runs, and a warning is logged
    (a limit guards a downstream service; stopping all work for it would be worse).
    """
    limit, period = parse_rate(rate)
    now = time.time()
    window = int(now // period)
    key = f"{settings.CACHES.get('default', {}).get('KEY_PREFIX', '')}:ratelimit:{name}:{window}"
    try:
        pipe = _client().pipeline()
        pipe.incr(key)
        pipe.expire(key, period * 2)
        count = pipe.execute()[0]
    except redis.RedisError as exc:
        logger.warning("rate limit %s not enforced: Redis unavailable (%s)", name, exc.__class__.__name__)
        return 0.0
    if count <= limit:
        return 0.0
    # Into the next window, spread over its first half so they do not all collide.
    return (window + 1) * period - now + random.uniform(0, period / 2)
