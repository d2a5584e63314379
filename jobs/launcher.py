"""The admin's job launcher: a typed form for any registered job, and an audited launch."""

from __future__ import annotations

import inspect
import typing
import uuid

from django import forms
from django.db import IntegrityError, transaction

from jobs.models import Job, JobLaunch
from jobs.services import enqueue, resolve_task
from jobs.topology import PriorityClass

_FIELDS = {int: forms.IntegerField, float: forms.FloatField, str: forms.CharField, bool: forms.BooleanField}


def launchable_tasks() -> list[str]:
    from project.celery import app

    app.loader.import_default_modules()
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def _parameters(task) -> list[tuple[str, type | None, object]]:
    try:
        hints = typing.get_type_hints(task.run)
    except Exception:  # noqa: BLE001 - unresolvable hints: treat as JSON
        hints = {}
    params = []
    for name, parameter in inspect.signature(task.run).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        params.append((name, hints.get(name), parameter.default))
    return params


def _field_for(annotation, default) -> forms.Field:
    required = default is inspect.Parameter.empty
    initial = None if required else default
    args = typing.get_args(annotation)
    if type(None) in args:  # Optional[X], X | None
        required = False
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else None
    base = typing.get_origin(annotation) or annotation
    if base is bool:
        return forms.BooleanField(required=False, initial=initial)
    field_class = _FIELDS.get(base)
    if field_class is not None:
        return field_class(required=required, initial=initial)
    return forms.JSONField(required=required, initial=initial, help_text="JSON")


class LaunchForm(forms.Form):
    """Built for one task: one typed field per parameter, a priority and a one-time token."""

    priority = forms.ChoiceField(
        choices=[(p.name.lower(), p.name.lower()) for p in PriorityClass], initial="normal"
    )
    token = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, task_name: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = resolve_task(task_name)
        self.parameter_names = []
        for name, annotation, default in _parameters(self.task):
            self.fields[f"param_{name}"] = _field_for(annotation, default)
            self.fields[f"param_{name}"].label = name
            self.parameter_names.append(name)
        if not self.is_bound:
            self.initial["token"] = uuid.uuid4()

    def job_kwargs(self) -> dict:
        values = {}
        for name in self.parameter_names:
            value = self.cleaned_data.get(f"param_{name}")
            if value is None and not self.fields[f"param_{name}"].required:
                continue
            values[name] = value
        return values


def launch(form: LaunchForm, user) -> tuple[Job, bool]:
    """Enqueues the form's job and audits it; (job, created). The token makes it once."""
    token = form.cleaned_data["token"]
    existing = JobLaunch.objects.filter(token=token).select_related("job").first()
    if existing is not None:
        return existing.job, False
    kwargs = form.job_kwargs()
    try:
        with transaction.atomic():
            job = enqueue(form.task, priority=form.cleaned_data["priority"], key=f"launch:{token}", **kwargs)
            JobLaunch.objects.create(
                token=token,
                user=user,
                username=user.get_username(),
                task_name=form.task.name,
                kwargs=kwargs,
                priority=form.cleaned_data["priority"],
                job=job,
            )
    except IntegrityError:  # the same token submitted twice at once
        return JobLaunch.objects.get(token=token).job, False
    return job, True
