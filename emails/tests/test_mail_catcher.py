"""The development mail catcher that `make run` starts."""

import mailbox
import smtplib
import subprocess
import sys
from email.message import EmailMessage

from django.conf import settings

from jobs.testing import free_port, wait_for


def test_mail_catcher_saves_each_message_in_a_maildir_even_if_the_folder_exists(tmp_path, worker_env):
    maildir = tmp_path / "mail"
    maildir.mkdir()  # as an earlier run or `mkdir -p` leaves it: no cur/new/tmp inside
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "mail_catcher", "--port", str(port), "--maildir", str(maildir)],
        cwd=settings.BASE_DIR, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "Łódź"
        message.set_content("hello")

        def send():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=2) as smtp:
                    smtp.send_message(message)
                return True
            except OSError:
                return False

        wait_for(send, timeout=20, interval=0.2, message="the catcher to accept a message")
        saved = list(mailbox.Maildir(str(maildir), create=False))
        assert len(saved) == 1 and saved[0]["To"] == "b@example.com"
    finally:
        process.terminate()
        process.wait(10)
