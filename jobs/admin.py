"""Admin for the job ledger: the durable history of every job, its actions, and the audit of both."""

import datetime
import json
import uuid

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from jobs import dead_letters, launcher, selectors, services
from jobs.admin_actions import ReadOnlyAdmin, StrictActionsMixin, job_link
from jobs.errors import CancelRefused
from jobs.models import DeadLetter, Event, Job, JobBulkAction, JobLaunch, JobState

WAITING_STATES = [JobState.PENDING, JobState.QUEUED, JobState.RETRYING]


def _how_a_run_stops() -> str:
    """What becomes of a running job asked to stop, for the admin's messages."""
    return f"it ends cancelled at its next checkpoint, or is stopped after {settings.JOBS_CANCEL_GRACE_SECONDS:g}s."


def _chosen_action(request) -> str:
    """The action a changelist POST ran: of the action menus (top, bottom), the one its
    `index` names, as Django's own response_action reads it."""
    actions = request.POST.getlist("action")
    try:
        return actions[int(request.POST.get("index", 0))]
    except (ValueError, IndexError):
        return actions[0] if actions else ""


class TagFilter(admin.SimpleListFilter):
    title = "tag"
    parameter_name = "tag"

    def lookups(self, request, model_admin):
        return [(tag, tag) for tag in selectors.common_tags()]

    def queryset(self, request, queryset):
        return selectors.tagged(queryset, self.value()) if self.value() else queryset


class ErrorClassFilter(admin.SimpleListFilter):
    title = "error class"
    parameter_name = "last_error_class"

    def lookups(self, request, model_admin):
        return [(name, name) for name in selectors.error_classes()]

    def queryset(self, request, queryset):
        return queryset.filter(last_error_class=self.value()) if self.value() else queryset


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"
    _AGES = {"1h": ("Last hour", 1), "1d": ("Last day", 24), "7d": ("Last week", 24 * 7)}

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in self._AGES.items()] + [("older", "Older than a week")]

    def queryset(self, request, queryset):
        value = self.value()
        if value in self._AGES:
            return queryset.filter(
                created_at__gte=timezone.now() - datetime.timedelta(hours=self._AGES[value][1])
            )
        if value == "older":
            return queryset.filter(created_at__lt=timezone.now() - datetime.timedelta(days=7))
        return queryset


@admin.register(Job)
class JobAdmin(StrictActionsMixin, admin.ModelAdmin):
    change_list_template = "admin/jobs/job/change_list.html"
    change_form_template = "admin/jobs/job/change_form.html"
    list_display = [
        "id", "task_name", "state", "progress_bar", "queue", "priority", "attempts", "created_at", "duration_ms",
    ]  # fmt: skip
    list_filter = ["state", "task_name", "queue", TagFilter, ErrorClassFilter, AgeFilter, "rescued_at"]
    search_fields = ["key", "task_name"]
    search_help_text = "A job id, tag:<a tag>, an idempotency key, or part of a task name."
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    actions = ["retry_dead_jobs", "cancel_jobs", "resend_queued_jobs"]
    list_per_page = 50
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["id", "task_name", "state", "queue", "priority", "key", "worker"]}),
        ("Payload", {"fields": ["args_pretty", "kwargs_pretty", "result"]}),
        (
            "Attempts",
            {"fields": ["attempts", "retries", "lost_runs", "last_error", "traceback_pretty", "trace"]},
        ),
        ("Progress", {"fields": ["progress_bar", "progress_at"]}),
        ("Cancellation", {"fields": ["cancel_requested_at", "cancel_requested_by"]}),
        (
            "Timings",
            {
                "fields": [
                    "created_at",
                    "run_after",
                    "queued_at",
                    "started_at",
                    "finished_at",
                    "duration_ms",
                    "delayed_until",
                    "rescued_at",
                ]
            },
        ),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    # The ledger owns every write of a job (jobs.ledger): the page only shows it, and
    # its actions go through jobs.services. Old jobs go with `manage.py prune_jobs`.
    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        pass

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            job = (
                Job.objects.filter(pk=uuid.UUID(str(object_id))).only("state").first() if object_id else None
            )
        except ValueError:
            job = None  # not a job id: Django's own view answers it
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "can_cancel": job is not None
            and not job.is_finished
            and self.has_change_permission(request, job),
        }
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("launch/", view(self.launch_view), name="jobs_job_launch"),
            path("dashboard/", view(self.dashboard_view), name="jobs_job_dashboard"),
            path("<uuid:object_id>/cancel/", view(self.cancel_view), name="jobs_job_cancel"),
            *super().get_urls(),
        ]

    def launch_view(self, request):
        """Pick a job, fill its typed parameters, launch it. GET never launches."""
        if not request.user.has_perm("jobs.launch_job"):
            raise PermissionDenied
        task_names = launcher.launchable_tasks()
        task_name = request.POST.get("task") or request.GET.get("task")
        form, status = None, 200
        if task_name:
            try:
                form = launcher.LaunchForm(task_name, request.POST or None)
            except services.EnqueueError as exc:  # not a job that opted in to the launcher
                self.message_user(request, str(exc), messages.ERROR)
                task_name, status = None, 400
        if form is not None:
            if request.method == "POST" and form.is_valid():
                try:
                    job, created = launcher.launch(form, request.user)
                except services.EnqueueError as exc:
                    form.add_error(None, str(exc))
                else:
                    note = "launched" if created else "was already launched by this form"
                    self.message_user(request, f"Job {job.task_name} {note}.", messages.SUCCESS)
                    return redirect("admin:jobs_job_change", job.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Launch a job",
            "opts": self.model._meta,
            "task_names": task_names,
            "task_name": task_name,
            "form": form,
            "recent": JobLaunch.objects.select_related("job")[:10],
        }
        return TemplateResponse(request, "admin/jobs/job/launch.html", context, status=status)

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Jobs dashboard",
            "opts": self.model._meta,
            **selectors.dashboard(),
        }
        return TemplateResponse(request, "admin/jobs/job/dashboard.html", context)

    def has_add_permission(self, request):
        return False

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if term.startswith("tag:"):
            return selectors.tagged(queryset, term[len("tag:") :]), False
        try:
            job_id = uuid.UUID(term)
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=job_id), False

    @admin.display(description="args")
    def args_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.args, indent=2))

    @admin.display(description="kwargs")
    def kwargs_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.kwargs, indent=2))

    @admin.display(description="traceback")
    def traceback_pretty(self, obj):
        return format_html("<pre>{}</pre>", obj.last_traceback) if obj.last_traceback else "-"

    @admin.display(description="trace id")
    def trace(self, obj):
        """The job's OpenTelemetry trace (jobs.tracing): a link when JOBS_TRACE_URL is set."""
        if not obj.trace_id:
            return "-"
        url = settings.JOBS_TRACE_URL
        if not url:
            return obj.trace_id
        return format_html('<a href="{}">{}</a>', url.replace("{trace_id}", obj.trace_id), obj.trace_id)

    @admin.display(description="progress")
    def progress_bar(self, obj):
        """A bar and the body's message (self.progress): done of total, or done alone."""
        if obj.progress_at is None:
            return "-"
        percent = obj.progress_percent
        if percent is None:
            label = f"{obj.progress_done:,} done"
            bar = format_html('<progress title="{}"></progress>', label)
        else:
            label = f"{obj.progress_done:,} / {obj.progress_total:,} ({percent:g}%)"
            bar = format_html('<progress max="100" value="{}" title="{}"></progress>', percent, label)
        return format_html("{} {}<br><small>{}</small>", bar, label, obj.progress_message)

    @admin.display(description="duration (ms)")
    def duration_ms(self, obj):
        return round(obj.duration.total_seconds() * 1000, 1) if obj.duration else None

    @admin.action(description="Retry selected dead jobs", permissions=["change"])
    def retry_dead_jobs(self, request, queryset):
        if request.POST.get("select_across") == "1":
            return self._act_on_all(
                request, queryset.filter(state=JobState.DEAD), "retry dead jobs",
                lambda ids: services.retry_dead_jobs(ids), "{n} dead job(s) retried.",
            )  # fmt: skip
        ids = list(queryset.values_list("pk", flat=True))
        retried = sum(services.retry_job(job_id) for job_id in ids)
        self.report_outcome(
            request, retried, len(ids), "{n} job(s) retried.", "{n} job(s) skipped: they were not dead."
        )

    @admin.action(
        description="Send selected queued jobs again (their message was lost)", permissions=["change"]
    )
    def resend_queued_jobs(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        sent = services.resend_queued_jobs(ids)
        self.report_outcome(
            request, sent, len(ids), "{n} job(s) sent again.", "{n} job(s) skipped: they were not queued."
        )

    @admin.action(description="Cancel selected jobs (running ones are asked to stop)", permissions=["change"])
    def cancel_jobs(self, request, queryset):
        if request.POST.get("select_across") == "1":
            username = request.user.get_username()
            return self._act_on_all(
                request, queryset.filter(state__in=WAITING_STATES), "cancel waiting jobs",
                lambda ids: services.cancel_waiting_jobs(ids, by=username), "{n} waiting job(s) cancelled.",
            )  # fmt: skip
        ids = list(queryset.values_list("pk", flat=True))
        outcomes = {services.CANCELLED: 0, services.STOPPING: 0}
        for job_id in ids:
            try:
                outcomes[services.cancel(job_id, by=request.user.get_username())] += 1
            except CancelRefused:
                pass
        if outcomes[services.STOPPING]:
            self.message_user(
                request,
                f"{outcomes[services.STOPPING]} running job(s) asked to stop: {_how_a_run_stops()}",
                messages.SUCCESS,
            )
        self.report_outcome(
            request,
            outcomes[services.CANCELLED],
            len(ids) - outcomes[services.STOPPING],
            "{n} job(s) cancelled.",
            "{n} job(s) skipped: they had finished already.",
        )

    def _act_on_all(self, request, eligible, action: str, act, done_message: str):
        """An action on every job the list's filters match (Django's "Select all"): a
        page showing how many it would change comes first; once confirmed, it runs in
        batches of JOBS_BULK_ACTION_BATCH, each its own transaction, and is recorded
        (Job bulk actions)."""
        count = eligible.count()
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": f"Confirm: {action}",
                "opts": self.model._meta,
                "action": _chosen_action(request),
                "action_label": action,
                "count": count,
                "filters": request.GET.urlencode(),
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            }
            return TemplateResponse(request, "admin/jobs/job/bulk_confirm.html", context)
        record = JobBulkAction.objects.create(
            user=request.user, username=request.user.get_username(), action=action,
            filters=request.GET.urlencode(), matched=count,
        )  # fmt: skip
        done, last = 0, None
        ordered = eligible.order_by("pk").values_list("pk", flat=True)
        while True:
            batch = list(
                (ordered.filter(pk__gt=last) if last else ordered)[: settings.JOBS_BULK_ACTION_BATCH]
            )
            if not batch:
                break
            done += act(batch)
            last = batch[-1]
            JobBulkAction.objects.filter(pk=record.pk).update(done=done)  # the record says how far it got
        JobBulkAction.objects.filter(pk=record.pk).update(done=done, finished_at=timezone.now())
        self.message_user(request, done_message.format(n=done) + f" (of {count} matched)", messages.SUCCESS)
        return None

    def cancel_view(self, request, object_id):
        """The Cancel button of a job's page (POST only)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            outcome = services.cancel(object_id, by=request.user.get_username())
        except CancelRefused as exc:
            self.message_user(request, str(exc), messages.WARNING)
        else:
            if outcome == services.CANCELLED:
                self.message_user(request, "Job cancelled.", messages.SUCCESS)
            else:
                self.message_user(
                    request,
                    f"The running job was asked to stop: {_how_a_run_stops()}",
                    messages.SUCCESS,
                )
        return redirect("admin:jobs_job_change", object_id)


@admin.register(DeadLetter)
class DeadLetterAdmin(StrictActionsMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "task_name",
        "queue",
        "reason",
        "state",
        "death_count",
        "times_seen",
        "last_seen",
        "job_link",
    ]
    list_filter = ["state", "queue", "reason", "task_name"]
    search_fields = ["task_name", "identity", "error"]
    search_help_text = "Task name, job / message id, or words of the error."
    date_hierarchy = "last_seen"
    actions = ["replay", "discard"]
    fields = [
        "task_name", "job_link", "identity", "state", "queue", "exchange", "routing_key", "reason",
        "death_count", "times_seen", "first_seen", "last_seen", "error", "body_pretty", "body_encoding",
        "headers_pretty", "properties_pretty", "replay_count", "resolved_by", "resolved_at",
    ]  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    @admin.display(description="Job")
    def job_link(self, obj):
        return job_link(obj.job_id, empty="- (not in the ledger)")

    @admin.display(description="body")
    def body_pretty(self, obj):
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", obj.body[:20000])

    @admin.display(description="headers")
    def headers_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.headers, indent=2, default=str))

    @admin.display(description="properties")
    def properties_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.properties, indent=2, default=str))

    @admin.action(description="Replay to the original queue", permissions=["change"])
    def replay(self, request, queryset):
        done, problems = 0, []
        for pk in queryset.values_list("pk", flat=True):
            try:
                dead_letters.replay(pk, by=request.user.get_username())
                done += 1
            except dead_letters.ReplayError as exc:
                problems.append(str(exc))
        if done:
            self.message_user(request, f"{done} dead letter(s) replayed.", messages.SUCCESS)
        for problem in problems:
            self.message_user(request, problem, messages.WARNING)

    @admin.action(description="Discard", permissions=["change"])
    def discard(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        done = sum(dead_letters.discard(pk, by=request.user.get_username()) for pk in ids)
        self.report_outcome(
            request, done, len(ids), "{n} dead letter(s) discarded.", "{n} skipped: they were not open."
        )


class SubscriberJobInline(admin.TabularInline):
    model = Job
    fk_name = "event"
    fields = ["job_link", "task_name", "state", "attempts", "last_error", "finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "subscriber jobs"

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Job")
    def job_link(self, obj):
        return job_link(obj.pk)


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "created_at", "subscriber_states"]
    list_filter = ["name"]
    search_fields = ["name"]
    date_hierarchy = "created_at"
    fields = ["name", "payload", "created_at"]
    readonly_fields = fields
    inlines = [SubscriberJobInline]

    def has_add_permission(self, request):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("jobs")

    @admin.display(description="Subscribers")
    def subscriber_states(self, obj):
        return ", ".join(f"{job.task_name}: {job.state}" for job in obj.jobs.all()) or "-"


@admin.register(JobLaunch)
class JobLaunchAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["created_at", "username", "task_name", "priority", "job"]
    list_filter = ["task_name", "username"]
    fields = ["created_at", "username", "task_name", "kwargs", "priority", "job", "token"]
    readonly_fields = fields


@admin.register(JobBulkAction)
class JobBulkActionAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["created_at", "username", "action", "matched", "done", "finished_at"]
    list_filter = ["action", "username"]
    fields = ["created_at", "username", "action", "filters", "matched", "done", "finished_at"]
    readonly_fields = fields
