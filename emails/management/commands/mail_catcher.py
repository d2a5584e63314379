import mailbox
import time
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from django.conf import settings
from django.core.management.base import BaseCommand

from jobs.shutdown import stop_requested_on_signal


class Command(BaseCommand):
    help = "Development SMTP server (aiosmtpd): accepts every message and saves it in a maildir."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=1025)
        parser.add_argument("--maildir", default=str(Path(settings.BASE_DIR) / "var" / "mail"))

    def handle(self, *args, host: str, port: int, maildir: str, **options):
        # Maildir(create=True) makes cur/new/tmp only when the folder itself is new.
        for sub in ("cur", "new", "tmp"):
            Path(maildir, sub).mkdir(parents=True, exist_ok=True)
        mailbox.Maildir(maildir, create=True)
        controller = Controller(Mailbox(maildir), hostname=host, port=port)
        controller.start()
        self.stdout.write(f"mail catcher on smtp://{host}:{port}, saving to {maildir}/new/")
        stop = stop_requested_on_signal()
        try:
            while not stop():
                time.sleep(0.5)
        finally:
            controller.stop()
