"""Jobs of the platform itself."""

from jobs.relay import relay_until_drained
from project.celery import app


@app.task(name="jobs.relay_pending_jobs")
def relay_pending_jobs() -> int:
    """Publishes due pending jobs; a backstop for the long-running relay."""
    return relay_until_drained()
