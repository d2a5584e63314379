"""The admin's job launcher: a typed form for the jobs that opt in, and an audited launch."""

from __future__ import annotations

import inspect
import types
import typing
import uuid

from celery import Task
from django import forms
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.forms.fields import InvalidJSONInput

from jobs.app import celery_app
from jobs.models import Job, JobLaunch
from jobs.services import EnqueueError, enqueue, resolve_task
from jobs.storable import unstorable_text
from jobs.topology import PriorityClass

_FIELDS = {int: forms.IntegerField, float: forms.FloatField, str: forms.CharField, bool: forms.BooleanField}

# Parameters are ids and small structures; anything deeper is a mistake or an attack.
MAX_JSON_DEPTH = 32


def launchable_tasks() -> list[str]:
    """The names of the jobs an operator may launch from the admin, sorted.

    A job is launchable only if it opts in, with a class attribute of its task:
    `@app.task(name=..., launchable=True)` (jobs.base.JobTask says False). Opt in jobs
    an operator may run by hand at any time with typed parameters: idempotent work
    such as making an invoice's PDF, the overdue reminders or a cache invalidation.
    Leave out the platform's internals (the relay), event subscribers (they expect an
    event the launcher cannot make) and jobs that need a record a service creates first.
    """
    app = celery_app()
    app.loader.import_default_modules()
    return sorted(name for name, task in app.tasks.items() if getattr(task, "launchable", False) is True)


def launchable_task(task_name: str) -> Task:
    """The task named `task_name` if it is launchable; EnqueueError, saying why, if not."""
    if task_name not in launchable_tasks():
        raise EnqueueError(
            f"Job {task_name!r} cannot be launched from the admin: only jobs that opt in "
            "(launchable=True on their task) are offered. Pick one from the list."
        )
    return resolve_task(task_name)


def _hint_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join("None" if a is type(None) else _hint_name(a) for a in args)
    if origin is typing.Literal:
        return f"one of {', '.join(repr(a) for a in args)}"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _hint_name(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return getattr(hint, "__name__", repr(hint))


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def _unusable_json(value) -> str | None:
    """Why `value` (parsed JSON) cannot be a job's argument: too deep, or text the job
    ledger cannot store; None if it can. A loop, not recursion: it runs before the depth
    is known."""
    stack = [(value, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            reason = unstorable_text(value)
            if reason:
                return f"The text at {where or 'the top level'} holds {reason}; remove it."
        elif isinstance(value, list | dict):
            if depth > MAX_JSON_DEPTH:
                return f"Lists and objects nest deeper than {MAX_JSON_DEPTH} levels; pass ids instead."
            if isinstance(value, dict):
                for key in value:
                    reason = unstorable_text(key)
                    if reason:
                        return f"The key {key!r} at {where or 'the top level'} holds {reason}; remove it."
                items = [(item, f"{where}[{key!r}]") for key, item in value.items()]
            else:
                items = [(item, f"{where}[{n}]") for n, item in enumerate(value)]
            stack.extend((item, path, depth + 1) for item, path in reversed(items))
    return None


def type_problem(value, hint, where: str = "") -> str | None:
    """Why the parsed JSON `value` does not fit the type hint `hint`, or None if it does.

    Understands None (no hint) and Any, None, bool, int, float (an int fits), str,
    list[X], tuple[X, ...] and tuple[X, Y] (a JSON list), dict[str, X], Optional and
    unions, Literal, and these nested; any other hint is refused as one the launcher
    cannot check. It recurses: give it JSON no deeper than MAX_JSON_DEPTH.
    """
    if hint is None or hint is typing.Any or hint is inspect.Parameter.empty or hint is object:
        return None
    at = f"At {where}: expected" if where else "Expected"
    wrong = f"{at} {_hint_name(hint)}, got {_json_kind(value)}."
    if hint is type(None):
        return None if value is None else wrong
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        problems = [type_problem(value, a, where) for a in args]
        if all(problems):
            others = [p for a, p in zip(args, problems, strict=True) if a is not type(None)]
            # Optional[X] given something that is not null: say what is wrong inside X.
            return others[0] if len(others) == 1 and value is not None else wrong
        return None
    if origin is typing.Literal:
        return None if any(value == a and type(value) is type(a) for a in args) else wrong
    if hint is bool:
        return None if isinstance(value, bool) else wrong
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else wrong
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else wrong
    if hint is str:
        return None if isinstance(value, str) else wrong
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list):
            return wrong
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return f"{at} {_hint_name(hint)} ({len(args)} items), got {len(value)} item(s)."
            item_hints = args
        else:
            item_hints = [args[0] if args else None] * len(value)
        for n, (item, item_hint) in enumerate(zip(value, item_hints, strict=True)):
            problem = type_problem(item, item_hint, f"{where}[{n}]")
            if problem:
                return problem
        return None
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return wrong
        key_hint, value_hint = args or (str, None)
        if key_hint not in (str, typing.Any):
            return f"The launcher cannot check {_hint_name(hint)}: JSON object keys are text."
        for key, item in value.items():
            problem = type_problem(item, value_hint, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    return f"The launcher cannot check values of type {_hint_name(hint)}; launch this job from code."


class TypedJSONField(forms.JSONField):
    """JSON for one parameter, checked against its type hint, its depth and its text;
    shown again exactly as typed when the form has errors."""

    def __init__(self, hint=None, **kwargs):
        self.hint = hint
        super().__init__(**kwargs)

    def to_python(self, value):
        try:
            converted = super().to_python(value)
        except RecursionError:
            raise ValidationError(
                f"Lists and objects nest deeper than {MAX_JSON_DEPTH} levels; pass ids instead.",
                code="too_deep",
            ) from None
        if converted is None:
            return None  # empty or null: `required` decides
        problem = _unusable_json(converted) or type_problem(converted, self.hint)
        if problem:
            raise ValidationError(problem, code="invalid")
        return converted

    def bound_data(self, data, initial):
        # Django parses the input again to show it; what was typed is safer to show.
        return None if data is None else InvalidJSONInput(data)


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
    hint = annotation
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
    if field_class is forms.CharField and type(None) in args:
        return forms.CharField(required=False, initial=initial, empty_value=None)  # blank: the default
    if field_class is not None:
        return field_class(required=required, initial=initial)
    help_text = f"JSON: {_hint_name(hint)}" if hint is not None else "JSON"
    return TypedJSONField(hint, required=required, initial=initial, help_text=help_text)


class LaunchForm(forms.Form):
    """Built for one task: one typed field per parameter, a priority and a one-time token."""

    priority = forms.ChoiceField(
        choices=[(p.name.lower(), p.name.lower()) for p in PriorityClass], initial="normal"
    )
    token = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, task_name: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = launchable_task(task_name)
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
