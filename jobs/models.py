"""The job ledger: one durable row per job, whose id is the Celery task id."""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q
from django.utils import timezone


class JobState(models.TextChoices):
    PENDING = "pending", "Pending"  # written, not yet published (the outbox)
    QUEUED = "queued", "Queued"  # published and confirmed by RabbitMQ
    STARTED = "started", "Started"  # a worker holds the job's lease and runs it
    RETRYING = "retrying", "Retrying"  # failed transiently; the relay publishes it at `run_after`
    SUCCEEDED = "succeeded", "Succeeded"
    DEAD = "dead", "Dead"  # failed for good; its message went to the dead-letter queue
    CANCELLED = "cancelled", "Cancelled"


# The allowed moves between these states, and every write of a job, are the
# ledger's (jobs.ledger).
FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})
# States in which a job is "the same job" for a uniqueness key: waiting or running.
ACTIVE_STATES = (JobState.PENDING, JobState.QUEUED, JobState.STARTED, JobState.RETRYING)


class Event(models.Model):
    """Something that happened, published with jobs.publish; each subscriber runs as its own job."""

    name = models.CharField(max_length=100, db_index=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_name = models.CharField(max_length=200)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100)
    priority = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="Runs started, retries included.")
    retries = models.PositiveIntegerField(
        default=0,
        help_text="Transient failures retried in this round; an operator's retry starts a new round.",
    )
    lost_runs = models.PositiveSmallIntegerField(
        default=0, help_text="Runs whose worker died before they finished."
    )
    key = models.CharField(  # noqa: DJ001 - NULL is "no key"; the partial unique index skips it
        max_length=255,
        null=True,
        blank=True,
        help_text="Idempotency key: enqueuing the same key again returns this job.",
    )
    unique_key = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="Uniqueness key: while this job waits or runs, an equal one returns it.",
    )
    last_error = models.TextField(blank=True)
    last_error_class = models.CharField(
        max_length=255, blank=True, help_text="Module path of the error's class."
    )
    last_traceback = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    run_after = models.DateTimeField(
        null=True, blank=True, help_text="Not published before this time (retries, deferred jobs)."
    )
    event = models.ForeignKey(
        Event,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        db_index=False,  # a partial index below: most jobs belong to no event
        help_text="Subscriber job of.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    delayed_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the relay looks again whether a run still holds the lease of this started job "
        "(a second copy found it busy).",
    )
    rescued_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sent again because its message looked lost (jobs/rescue.py)."
    )
    tags = ArrayField(
        models.CharField(max_length=64),
        default=list,
        db_default=[],
        blank=True,
        help_text="Short labels given at enqueue (customer:7, month-end), to find and act on jobs by.",
    )
    soft_time_limit = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds a run may take before its body is interrupted (else the task's).",
    )
    time_limit = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds a run may take before its process is killed (else the task's).",
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Not started by then, it never runs: it ends cancelled, as expired."
    )
    progress_done = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Steps done, as the body reports."
    )
    progress_total = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Steps in all, if known."
    )
    progress_message = models.CharField(max_length=200, blank=True, default="", db_default="")
    progress_at = models.DateTimeField(
        null=True, blank=True, help_text="When the body last reported progress."
    )
    cancel_requested_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When someone asked to cancel it (jobs.cancel); a running job stops then.",
    )
    # A database default too: a row written by an older release (rolling deploy) gets it.
    cancel_requested_by = models.CharField(
        max_length=150, blank=True, default="", db_default="", help_text="Who asked to cancel it."
    )
    traceparent = models.CharField(
        max_length=55,
        blank=True,
        default="",
        db_default="",
        help_text="The W3C trace context of its enqueue (jobs.tracing): every run of it joins that trace.",
    )

    class Meta:
        ordering = ["-created_at"]
        permissions = [("launch_job", "Can launch jobs from the admin's job launcher")]
        # Few indexes, partial where most rows have no value: every state change of a
        # job rewrites the row, and every index on it is written again each time.
        indexes = [
            # The relay's scan: only pending rows, oldest first.
            models.Index(fields=["created_at"], name="job_pending_created_idx", condition=Q(state="pending")),
            # The relay's other scans: retries due, and started jobs to look at again.
            models.Index(fields=["run_after"], name="job_retrying_due_idx", condition=Q(state="retrying")),
            models.Index(
                fields=["delayed_until"], name="job_recheck_idx", condition=Q(delayed_until__isnull=False)
            ),
            models.Index(fields=["unique_key"], name="job_unique_key_idx", condition=~Q(unique_key="")),
            # Running jobs asked to stop (the relay's look for stops a worker missed).
            models.Index(
                fields=["cancel_requested_at"],
                name="job_stop_asked_idx",
                condition=Q(state="started", cancel_requested_at__isnull=False),
            ),
            # Jobs found by tag (the admin's filter and bulk actions); untagged ones stay out.
            GinIndex(fields=["tags"], name="job_tags_idx", condition=~Q(tags=[])),
            models.Index(fields=["event"], name="job_event_idx", condition=Q(event__isnull=False)),
            # Jobs the rescue sent again (jobs/rescue.py), counted on every metrics scrape.
            models.Index(
                fields=["rescued_at"], name="job_rescued_idx", condition=Q(rescued_at__isnull=False)
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["key"], name="job_key_unique", condition=Q(key__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.id}] {self.state}"

    @property
    def trace_id(self) -> str:
        """The OpenTelemetry trace id of this job (32 hex digits), or "" if it was enqueued untraced."""
        return self.traceparent[3:35] if self.traceparent else ""

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def progress_percent(self) -> float | None:
        """Done as a share of the total, 0 to 100; None without a known total."""
        if self.progress_done is None or not self.progress_total:
            return None
        return round(min(100.0, 100.0 * self.progress_done / self.progress_total), 1)

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class DeadLetterState(models.TextChoices):
    OPEN = "open", "Open"
    REPLAYED = "replayed", "Replayed"
    DISCARDED = "discarded", "Discarded"


class DeadLetter(models.Model):
    """A message RabbitMQ dead-lettered, kept by the dead-letter keeper (jobs.dead_letters).

    Every message of the dead-letter queue becomes (or updates) a row, whether the
    ledger knew it (a job that failed for good) or not (an unknown task name, an
    undecodable or pickle body, a foreign publisher).
    """

    identity = models.CharField(
        max_length=255, db_index=True, help_text="The task id, else the message id, else a hash of the body."
    )
    job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_letters"
    )
    task_name = models.CharField(max_length=200, blank=True, db_index=True)
    queue = models.CharField(max_length=200, blank=True, help_text="The queue it was dead-lettered from.")
    exchange = models.CharField(max_length=200, blank=True)
    routing_key = models.CharField(max_length=200, blank=True)
    reason = models.CharField(
        max_length=32, blank=True, help_text="x-death reason: rejected, expired, maxlen..."
    )
    death_count = models.PositiveIntegerField(default=1, help_text="x-death count for that queue and reason.")
    times_seen = models.PositiveIntegerField(default=1)
    error = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    body = models.TextField(blank=True)
    body_encoding = models.CharField(
        max_length=8, default="utf-8", help_text="utf-8, or base64 for binary bodies."
    )
    state = models.CharField(max_length=10, choices=DeadLetterState.choices, default=DeadLetterState.OPEN)
    replay_count = models.PositiveIntegerField(default=0)
    resolved_by = models.CharField(max_length=150, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-last_seen"]
        indexes = [models.Index(fields=["state", "queue"], name="deadletter_state_queue_idx")]

    def __str__(self) -> str:
        return f"{self.task_name or self.identity} from {self.queue or '?'} ({self.state})"


class JobLaunch(models.Model):
    """Audit of a job started by hand from the admin's job launcher: who, what, when."""

    token = models.UUIDField(unique=True, help_text="One per launcher form: a double submit launches once.")
    user = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    task_name = models.CharField(max_length=200)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    priority = models.CharField(max_length=10)
    job = models.ForeignKey(Job, null=True, on_delete=models.SET_NULL, related_name="launches")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.username} launched {self.task_name} at {self.created_at:%Y-%m-%d %H:%M}"


class JobBulkAction(models.Model):
    """Audit of an admin action run on every job a filter matched: who, what, how many."""

    user = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=50)
    filters = models.TextField(blank=True, help_text="The job list's filters and search, as its URL query.")
    matched = models.PositiveIntegerField(help_text="Jobs the filter matched when the action was confirmed.")
    done = models.PositiveIntegerField(default=0, help_text="Jobs the action changed.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.username}: {self.action} on {self.matched} job(s) at {self.created_at:%Y-%m-%d %H:%M}"
