"""A backend for Django's task API that runs tasks on this platform: the ledger, the
outbox, Celery workers, retries and dead letters. On Django 6 the API is Django's own
(`django.tasks`); on Django 5.2 it is the `django_tasks` package Django took it from.
This module imports whichever is there, and offers the names tests and code share
(`task`, `task_backends`, `default_task_backend`, `TaskResultStatus`, `InvalidTaskError`,
`TaskResultDoesNotExist`).

    TASKS = {"default": {"BACKEND": "jobs.django_tasks.LedgerBackend"}}

    from django.tasks import task      # Django 6 (from django_tasks import task on 5.2)

    @task(queue_name="cache", priority=50)
    def invalidate(namespace: str) -> None: ...

    invalidate.enqueue("customer-invoices:7")          # after commit, like jobs.enqueue

Each Django task becomes a Celery task of the same name (its module path) on the
platform's base class, registered when the task is declared; workers find it through
the app's `tasks` modules, as they find every job. A coroutine task (`async def`) is
awaited on the worker's event loop, like any async job body (jobs.async_bodies). What
the API allows and the platform cannot honour is refused when the task is declared or
enqueued: queue names that are not workload queues, arguments that are not JSON, and
return values that are not JSON (the job ends dead, saying so).
"""

from __future__ import annotations

import inspect
import json
import logging

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

try:  # Django 6: the task API is Django's own
    from django.tasks import (
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskError
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:  # Django 5.2: the django_tasks backport it was taken from
    from django_tasks import (
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskError
    from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started

from jobs.app import celery_app

__all__ = [
    "InvalidTaskError", "LedgerBackend", "TaskResultDoesNotExist", "TaskResultStatus", "default_task_backend",
    "priority_class", "task", "task_backends",
]  # fmt: skip
from jobs.base import JobTask
from jobs.errors import PermanentJobError
from jobs.models import Job, JobState
from jobs.topology import WORKLOAD_QUEUES, PriorityClass

logger = logging.getLogger(__name__)

_STATUS = {
    JobState.PENDING: TaskResultStatus.READY,
    JobState.QUEUED: TaskResultStatus.READY,
    JobState.RETRYING: TaskResultStatus.READY,
    JobState.STARTED: TaskResultStatus.RUNNING,
    JobState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobState.DEAD: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
}


def priority_class(priority: int) -> PriorityClass:
    """Django's -100..100 onto the platform's classes: above 33 urgent, below -33 bulk."""
    if priority > 33:
        return PriorityClass.URGENT
    if priority < -33:
        return PriorityClass.BULK
    return PriorityClass.NORMAL


class DjangoTaskJob(JobTask):
    """The Celery side of a Django task: calls the task's function, reports signals."""

    django_task_path: str = ""

    def run(self, *args, **kwargs):
        django_task, backend, result = self._started(self.request.id)
        try:
            return self._stored(django_task.func(*self._call_args(django_task, result, args), **kwargs))
        finally:
            # The ledger's final state is written after this returns; the signal says
            # the function finished, which is what receivers of Django's API expect.
            task_finished.send(type(backend), task_result=result)

    def _started(self, job_id: str):
        django_task: Task = import_string(self.django_task_path)
        backend = django_task.get_backend()
        result = backend.get_result(job_id)
        task_started.send(type(backend), task_result=result)
        return django_task, backend, result

    @staticmethod
    def _call_args(django_task: Task, result: TaskResult, args) -> tuple:
        return (TaskContext(task_result=result), *args) if django_task.takes_context else tuple(args)

    def _stored(self, value):
        """`value`, if the ledger can store it as the job's result."""
        try:
            json.dumps(value, allow_nan=False)
            stored = "\\u0000" not in json.dumps(value)
        except (TypeError, ValueError):
            stored = False
        if not stored:
            raise PermanentJobError(
                f"Task {self.django_task_path} returned a {type(value).__name__}, which is not JSON; "
                "return ids, strings, numbers, lists or dicts."
            ) from None
        return value


class AsyncDjangoTaskJob(DjangoTaskJob):
    """A Django task whose function is a coroutine: awaited on the worker's event loop
    (jobs.async_bodies), the backend's reads and signals run off the loop."""

    async def run(self, *args, **kwargs):
        django_task, backend, result = await sync_to_async(self._started)(self.request.id)
        try:
            return self._stored(await django_task.func(*self._call_args(django_task, result, args), **kwargs))
        finally:
            await sync_to_async(task_finished.send)(type(backend), task_result=result)


class LedgerBackend(BaseTaskBackend):
    supports_defer = True  # run_after, honoured through the ledger and the relay
    supports_get_result = True
    supports_priority = True
    supports_async_task = True  # run on the worker's event loop (jobs.async_bodies)

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        if "QUEUES" not in params:
            self.queues = set(WORKLOAD_QUEUES)
        unknown = self.queues - set(WORKLOAD_QUEUES)
        if unknown:
            raise InvalidTaskError(
                f"TASKS[{alias!r}] names queues {sorted(unknown)}, which are not workload queues "
                f"of the platform ({', '.join(WORKLOAD_QUEUES)})."
            )

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if not TASK_MIN_PRIORITY <= task.priority <= TASK_MAX_PRIORITY:  # the base says so too; be explicit
            raise InvalidTaskError(f"priority must be between {TASK_MIN_PRIORITY} and {TASK_MAX_PRIORITY}.")
        self.celery_task(task)

    def celery_task(self, task: Task):
        """The Celery task that runs `task` on workers, registered on first use."""
        app = celery_app()
        name = task.module_path
        registered = app._tasks.get(name)
        if registered is not None:
            return registered
        job_class = type(
            f"DjangoTask[{name}]",
            (AsyncDjangoTaskJob if inspect.iscoroutinefunction(task.func) else DjangoTaskJob,),
            {
                "name": name,
                "django_task_path": name,
                "queue": task.queue_name,
                "__module__": task.func.__module__,
            },
        )
        return app.register_task(job_class())

    def enqueue(self, task: Task, args, kwargs) -> TaskResult:
        """Records a job in the caller's transaction; published after commit (or by the relay)."""
        from jobs import services

        self.validate_task(task)
        celery_task = self.celery_task(task)
        args, kwargs = list(args), dict(kwargs)
        signature = inspect.signature(task.func)
        if task.takes_context:  # the worker passes the context first
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        try:
            job = services.enqueue_call(
                celery_task, tuple(args), kwargs, priority=priority_class(task.priority), run_after=task.run_after,
                queue=task.queue_name, signature=signature,
            )  # fmt: skip
        except services.EnqueueError as exc:
            raise InvalidTaskError(str(exc)) from None
        result = self._result(task, job)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            job = Job.objects.get(pk=result_id)
        except (Job.DoesNotExist, ValidationError):
            raise TaskResultDoesNotExist(result_id) from None
        try:
            task = import_string(job.task_name)
        except ImportError:
            raise TaskResultDoesNotExist(f"{result_id} is not a Django task ({job.task_name})") from None
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(
                f"{result_id} is a platform job, not a Django task ({job.task_name})"
            )
        return self._result(task, job)

    def _result(self, task: Task, job: Job) -> TaskResult:
        errors = []
        if job.last_error and job.state in (JobState.DEAD, JobState.RETRYING, JobState.CANCELLED):
            errors.append(
                TaskError(
                    exception_class_path=job.last_error_class or "builtins.Exception",
                    traceback=job.last_traceback or job.last_error,
                )
            )
        result = TaskResult(
            task=task,
            id=str(job.id),
            status=_STATUS[job.state],
            enqueued_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_attempted_at=job.started_at,
            args=list(job.args),
            kwargs=dict(job.kwargs),
            backend=self.alias,
            errors=errors,
            worker_ids=[job.worker or "worker"] * job.attempts,
        )
        object.__setattr__(result, "_return_value", job.result)
        return result
