"""Global rate limits hold across worker processes, delaying jobs in the ledger."""

import pytest

import jobs
from jobs.models import Job, JobState
from jobs.testing import wait_for
from jobs.tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_global_rate_limit_holds_across_worker_processes_and_delays_instead_of_failing(worker, tmp_path):
    path = str(tmp_path / "out")
    job_ids = [jobs.enqueue(tasks.limited, path, n).id for n in range(12)]

    wait_for(
        lambda: Job.objects.filter(pk__in=job_ids, state=JobState.SUCCEEDED).count() == 12,
        timeout=30,
        message="all limited jobs",
    )
    with open(path) as fh:
        stamps = sorted(float(line.split()[1]) for line in fh)
    # 4 per one-second window across both worker processes: 12 jobs need three windows,
    # so the last starts at least one full second after the first.
    assert stamps[-1] - stamps[0] > 1.0
    per_second = {}
    for stamp in stamps:
        per_second[int(stamp)] = per_second.get(int(stamp), 0) + 1
    assert len(per_second) >= 3
    assert max(per_second.values()) <= 4 + 1  # a run may be stamped just across its window's edge
    assert not Job.objects.filter(pk__in=job_ids, attempts__gt=1).exists(), "delayed, never retried as failed"
    assert "over the 4/s limit" in worker.log()
    # Each delayed job waited in the ledger (run_after), its copy acknowledged, and the
    # relay published it when due: 12 jobs at 4 a second, with at most two windows
    # open at the first start, delay 4 at least.
    assert Job.objects.filter(pk__in=job_ids, run_after__isnull=False).count() >= 4
