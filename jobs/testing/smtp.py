"""A real SMTP server for tests (aiosmtpd), told per test how to answer.

`script` is a list of what to do with the next messages, one entry each:
"accept", an SMTP reply such as "451 4.3.0 try later" or "550 5.1.1 no such user",
or "drop" (close the connection without answering). When the script runs out,
messages are accepted. Accepted messages are kept, parsed, in `received`.
"""

from __future__ import annotations

import email
import email.policy
import threading

from aiosmtpd.controller import Controller

from jobs.testing import free_port


class ScriptedHandler:
    def __init__(self):
        self.lock = threading.Lock()
        self.script: list[str] = []
        self.received: list[email.message.EmailMessage] = []
        self.answers: list[str] = []

    def reset(self, script=()):
        with self.lock:
            self.script = list(script)
            self.received.clear()
            self.answers.clear()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            action = self.script.pop(0) if self.script else "accept"
            self.answers.append(action)
            if action == "accept":
                self.received.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        if action == "drop":
            server.transport.close()
            return "421 closing"  # never reaches the client: the connection is gone
        if action == "accept":
            return "250 OK"
        return action

    def by_message_id(self, message_id: str) -> list:
        with self.lock:
            return [m for m in self.received if m["Message-ID"] == message_id]


class SMTPTestServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.handler = ScriptedHandler()
        self.controller = Controller(self.handler, hostname=host, port=free_port())

    def start(self) -> SMTPTestServer:
        self.controller.start()
        return self

    @property
    def port(self) -> int:
        return self.controller.port

    def stop(self) -> None:
        self.controller.stop()
