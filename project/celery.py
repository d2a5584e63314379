"""The Celery app: Django settings under the CELERY_ namespace, the platform's base task
class, settings and topology (jobs.app.configure), as any project that adds the
platform makes it (docs/install.md).

`celery -A project worker` and `celery -A project flower` find `app` here.
"""

import os

from celery import Celery

import jobs.app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project", task_cls="jobs.base:JobTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
jobs.app.configure(app)
app.autodiscover_tasks()
