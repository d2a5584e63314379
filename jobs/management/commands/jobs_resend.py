from django.core.management.base import BaseCommand
from django.utils import timezone

from jobs.management.ages import parse_age
from jobs.models import Job, JobState
from jobs.services import resend_queued_jobs
from jobs.topology import Workload

_BATCH = 1000


class Command(BaseCommand):
    help = (
        "Publishes again the messages of jobs queued for longer than --queued-before: for "
        "messages lost in RabbitMQ (a purged or deleted queue, a broker that lost its disk). "
        "A message that was not lost makes a second copy, which the worker acks without running."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--queued-before",
            required=True,
            help="Resend jobs queued at least this long ago: 1h, 30m, 2d (0m: every queued job).",
        )
        parser.add_argument("--queue", choices=[w.value for w in Workload], help="Only jobs of this queue.")
        parser.add_argument("--dry-run", action="store_true", help="Count them; change nothing.")

    def handle(self, *args, queued_before: str, queue: str | None, dry_run: bool, **options):
        age = parse_age(queued_before, "--queued-before")
        jobs = Job.objects.filter(state=JobState.QUEUED, queued_at__lte=timezone.now() - age)
        if queue:
            jobs = jobs.filter(queue=queue)
        ids = list(jobs.order_by("queued_at").values_list("pk", flat=True))
        if dry_run:
            self.stdout.write(f"{len(ids)} queued job(s) would be sent again")
            return
        sent = sum(resend_queued_jobs(ids[n : n + _BATCH]) for n in range(0, len(ids), _BATCH))
        self.stdout.write(
            f"{sent} queued job(s) sent again (the relay sends any that RabbitMQ did not take)"
            + (f"; {len(ids) - sent} had moved on meanwhile" if sent < len(ids) else "")
        )
