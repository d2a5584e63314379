"""The job API: `GET /api/jobs/<id>` gives a job's state, attempts, progress, timings
and result as JSON, for a page or a script to poll (permission `jobs.view_job`)."""

from __future__ import annotations

import uuid

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from jobs.models import Job


def _time(value):
    return value.isoformat() if value is not None else None


def job_json(job: Job) -> dict:
    """What the API says of a job."""
    progress = None
    if job.progress_at is not None:
        progress = {
            "done": job.progress_done,
            "total": job.progress_total,
            "percent": job.progress_percent,
            "message": job.progress_message,
            "updated_at": _time(job.progress_at),
        }
    duration = job.duration
    return {
        "id": str(job.id),
        "task": job.task_name,
        "state": job.state,
        "finished": job.is_finished,
        "queue": job.queue,
        "priority": job.priority,
        "attempts": job.attempts,
        "retries": job.retries,
        "progress": progress,
        "result": job.result,
        "last_error": job.last_error or None,
        "cancel_requested_at": _time(job.cancel_requested_at),
        "cancel_requested_by": job.cancel_requested_by or None,
        "trace_id": job.trace_id or None,
        "created_at": _time(job.created_at),
        "queued_at": _time(job.queued_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "run_after": _time(job.run_after),
        "duration_ms": round(duration.total_seconds() * 1000, 1) if duration else None,
    }


@require_GET
def job_detail(request, job_id: uuid.UUID):
    if not request.user.is_authenticated:
        return JsonResponse({"error": "Log in first (a session of a staff user)."}, status=401)
    if not request.user.has_perm("jobs.view_job"):
        return JsonResponse({"error": "You need the jobs.view_job permission."}, status=403)
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return JsonResponse({"error": f"There is no job {job_id}."}, status=404)
    return JsonResponse(job_json(job))
