import time

from django.core.management.base import BaseCommand

from jobs.management.ages import parse_age
from jobs.models import JobState
from jobs.services import prune_jobs


class Command(BaseCommand):
    help = "Deletes old finished jobs from the ledger (retention). Run it daily, from cron or beat."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", default="30d", help="Age of jobs to delete: 30d, 12h, 90m (default 30d)."
        )
        parser.add_argument(
            "--state",
            action="append",
            choices=JobState.values,
            help="States to prune (repeatable); default: succeeded and cancelled.",
        )

    def handle(self, *args, older_than: str, state: list[str] | None, **options):
        age = parse_age(older_than, "--older-than")
        states = tuple(state or (JobState.SUCCEEDED, JobState.CANCELLED))
        started = time.monotonic()
        deleted = prune_jobs(age, states)
        self.stdout.write(
            f"pruned {deleted} job(s) in {', '.join(states)} older than {older_than} "
            f"in {time.monotonic() - started:.1f}s"
        )
