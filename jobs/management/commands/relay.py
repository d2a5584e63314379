from django.core.management.base import BaseCommand

from jobs.relay import relay_until_drained, run_relay_forever
from jobs.shutdown import stop_requested_on_signal


class Command(BaseCommand):
    help = (
        "Publishes pending jobs (the outbox relay) and, every JOBS_RESCUE_INTERVAL_SECONDS, sends "
        "again jobs whose messages look lost (jobs_rescue). Runs until stopped; --once publishes once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Publish what is due, then exit.")
        parser.add_argument("--interval", type=float, default=None, help="Seconds between passes.")

    def handle(self, *args, once: bool, interval: float | None, **options):
        if once:
            sent = relay_until_drained()
            self.stdout.write(f"published {sent} pending job(s)")
            return
        self.stdout.write("relay running; publishing pending jobs and rescuing lost ones")
        run_relay_forever(interval=interval, stop=stop_requested_on_signal())
