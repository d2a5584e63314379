import signal

from django.core.management.base import BaseCommand

from jobs.dead_letters import run_keeper


class Command(BaseCommand):
    help = "Consumes the RabbitMQ dead-letter queue into DeadLetter rows (acks after commit). Runs until stopped."

    def handle(self, *args, **options):
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write("dead-letter keeper running")
        run_keeper(stop=lambda: stopping)
