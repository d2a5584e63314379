"""The worker's consumer (worker_consumer, set by jobs.app.configure): no message it cannot run is lost or stops it."""

import logging
from collections.abc import Mapping

from celery.exceptions import WorkerShutdown
from celery.worker.consumer import Consumer
from django.conf import settings
from vine import promise

from jobs import task_message, throughput
from jobs.broker import queues

logger = logging.getLogger("jobs")

# What Celery's strategy raises on a message of a shape jobs.task_message did not
# foresee; anything else (a lost connection, a closed pool) stays Celery's to handle.
_SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError, UnicodeError)


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, except that no message it cannot run is lost or kills it.

    - A message whose body cannot be decoded: Celery logs it and acks it (it is gone).
    - A message of the wrong shape (jobs.task_message): Celery's strategy raises and
      the worker exits, leaving the message to stop the next worker too.

    Both are rejected instead (without requeue) into the dead-letter queue, where the
    keeper records them with the reason and an operator can see them, and the worker
    goes on consuming.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prefetch_for_batches()

    def _prefetch_for_batches(self) -> None:
        """A worker that consumes only throughput queues (jobs.throughput) takes
        messages off RabbitMQ a batch per pool process at a time."""
        names = [str(queue.name) for queue in self.app.amqp.queues.consume_from.values()]
        sizes = [throughput.batch_size(name) for name in names]
        if not names or not all(sizes) or not self.initial_prefetch_count:
            if any(sizes):
                logger.warning(
                    "this worker consumes throughput queues beside others (%s): its prefetch "
                    "(--prefetch-multiplier) bounds their batches", ", ".join(names)
                )  # fmt: skip
            return
        multiplier = max(self.prefetch_multiplier, *sizes)
        processes = self.initial_prefetch_count // max(self.prefetch_multiplier, 1)
        self.prefetch_multiplier, self.initial_prefetch_count = multiplier, multiplier * processes

    def start(self):
        self._refuse_drifted_queues()
        return super().start()

    def _refuse_drifted_queues(self) -> None:
        """Stops the worker with a sentence, not Celery's PreconditionFailed traceback,
        when a queue it consumes was declared with other arguments (jobs.broker.queues)."""
        names = [queue.name for queue in self.app.amqp.queues.consume_from.values()]
        try:
            with self.app.connection_for_read() as connection:
                connection.ensure_connection(max_retries=3)
                drifted = [r for r in queues.verify(connection, names) if r.status == "drift"]
        except Exception as exc:  # noqa: BLE001 - Celery's own connection handling reports it
            logger.warning("could not check the queues before consuming (%s)", exc.__class__.__name__)
            return
        if drifted:
            for report in drifted:
                logger.critical("%s", queues.drift_advice(report))
            raise WorkerShutdown(queues.drift_advice(drifted[0]))

    def connection_for_write(self, url=None, heartbeat=None):
        """The connection the worker's events go out on (Celery's Events step is the
        only caller here): without publisher confirms, unless JOBS_CONFIRM_TASK_EVENTS.

        Events feed Flower only; the ledger is the durable record of every job. A
        confirm is a round trip for each of a job's three events, in the one process
        that also takes every message off RabbitMQ; an event lost with a dropped
        connection costs Flower one line of a job the ledger still has.
        """
        options = {} if settings.JOBS_CONFIRM_TASK_EVENTS else {"confirm_publish": False}
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options=options)
        )

    def create_task_handler(self, promise=promise):
        celery_handler = super().create_task_handler(promise)

        def on_task_received(message):
            try:
                payload = message.decode()
            except Exception:  # noqa: BLE001 - Celery's own paths report these (decode, content type)
                return celery_handler(message)
            reason = task_message.refusal(message.headers, payload)
            if reason is None:
                try:
                    return celery_handler(message)
                except _SHAPE_ERRORS as exc:
                    if message.acknowledged:
                        raise
                    reason = f"Celery could not turn it into a task call ({exc.__class__.__name__}: {exc})."
            self._refuse(message, reason)

        return on_task_received

    def _refuse(self, message, reason: str) -> None:
        headers = message.headers if isinstance(message.headers, Mapping) else {}
        logger.error(
            "message refused and dead-lettered: %s id=%r task=%r queue=%s",
            reason,
            headers.get("id"),
            headers.get("task"),
            (message.delivery_info or {}).get("routing_key"),
        )
        message.reject_log_error(logger, self.connection_errors, requeue=False)

    def on_decode_error(self, message, exc):
        logger.critical(
            "undecodable message dead-lettered: %s content_type=%s content_encoding=%s headers=%r",
            exc,
            message.content_type,
            message.content_encoding,
            {k: v for k, v in (message.headers or {}).items() if k in ("id", "task")},
        )
        message.reject(requeue=False)
