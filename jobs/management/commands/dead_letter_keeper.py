from django.core.management.base import BaseCommand

from jobs.dead_letters import run_keeper
from jobs.shutdown import stop_requested_on_signal


class Command(BaseCommand):
    help = "Consumes the RabbitMQ dead-letter queue into DeadLetter rows (acks after commit). Runs until stopped."

    def handle(self, *args, **options):
        self.stdout.write("dead-letter keeper running")
        run_keeper(stop=stop_requested_on_signal())
