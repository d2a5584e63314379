"""Worker customizations, set for the whole app in settings (CELERY_WORKER_CONSUMER)."""

import logging

from celery.worker.consumer import Consumer

logger = logging.getLogger("jobs")


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, except that an undecodable message is dead-lettered.

    Celery logs a message whose body cannot be decoded and acks it: it is gone.
    Rejecting it instead (without requeue) sends it to the dead-letter queue, where
    the keeper records it and an operator can see it.
    """

    def on_decode_error(self, message, exc):
        logger.critical(
            "undecodable message dead-lettered: %s content_type=%s content_encoding=%s headers=%r",
            exc,
            message.content_type,
            message.content_encoding,
            {k: v for k, v in (message.headers or {}).items() if k in ("id", "task")},
        )
        message.reject(requeue=False)
