"""The Celery app: Django settings under the CELERY_ namespace, one base task class.

`celery -A project worker` and `celery -A project flower` find `app` here. Queues,
exchange and routes come from jobs.topology, not from settings.
"""

import os

from celery import Celery

from jobs import topology

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project", task_cls="jobs.base:JobTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
topology.configure_app(app)
app.autodiscover_tasks()
