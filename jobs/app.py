"""The Celery app the platform runs on, found in one place.

`JOBS_CELERY_APP` names it ("package.module:app"); unset, it is Celery's current
app, the one a Django project's `celery.py` creates and its package imports. The
platform never imports the project itself, so `jobs` can live in any project.
"""

from __future__ import annotations

import functools

from celery import Celery, current_app
from celery.utils.imports import symbol_by_name
from django.conf import settings


@functools.cache
def celery_app() -> Celery:
    """The project's Celery app (see the module docstring)."""
    name = getattr(settings, "JOBS_CELERY_APP", None)
    if name:
        return symbol_by_name(name)
    return current_app._get_current_object()
