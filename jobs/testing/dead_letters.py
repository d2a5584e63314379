"""Reading the dead-letter queue of the broker under test."""

from __future__ import annotations

from jobs.testing import wait_for


class DeadLetterReader:
    """Reads the run's dead-letter queue, remembering what it took off it."""

    def __init__(self, app):
        self.app = app
        self.seen: list = []

    def _drain(self) -> None:
        from jobs.topology import DEAD_LETTER_QUEUE

        with self.app.connection_for_write() as connection:
            channel = connection.channel()
            try:
                while (message := channel.basic_get(DEAD_LETTER_QUEUE)) is not None:
                    channel.basic_ack(message.delivery_tag)
                    self.seen.append(message)
            finally:
                channel.close()

    def find(self, task_id, timeout: float = 20.0):
        """The dead-lettered message of `task_id`, waiting for it to arrive."""

        def look():
            self._drain()
            for message in self.seen:
                headers = message.properties.get("application_headers") or {}
                if headers.get("id") == str(task_id):
                    return message
            return None

        return wait_for(look, timeout, interval=0.2, message=f"dead letter of {task_id}")
