from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from jobs.management.ages import parse_age
from jobs.rescue import rescue_lost_jobs


class Command(BaseCommand):
    help = (
        "Sends again the jobs whose messages look lost: queued, started (no run holding its "
        "lease) or due to retry for longer than --after, in a queue with no ready message. "
        "The relay runs this every JOBS_RESCUE_INTERVAL_SECONDS."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--after",
            help=(
                "How long a job must have waited, and since its last rescue: 15m, 2h, 1d "
                "(default: JOBS_RESCUE_AFTER_SECONDS)."
            ),
        )
        parser.add_argument("--dry-run", action="store_true", help="List them; change nothing.")

    def handle(self, *args, after: str | None, dry_run: bool, **options):
        seconds = settings.JOBS_RESCUE_AFTER_SECONDS
        if after is not None:
            seconds = parse_age(after, "--after").total_seconds()
        rescue = rescue_lost_jobs(seconds, dry_run=dry_run)
        if rescue.broker_unreachable:
            raise CommandError("RabbitMQ did not answer: the rescue needs its queue depths.")
        verb = "would be sent again" if dry_run else "sent again"
        self.stdout.write(f"jobs whose messages look lost, {verb}: {rescue.describe()}")
        for state, ids in rescue.lost.items():
            for job_id in ids:
                self.stdout.write(f"  {state} {job_id}")
