"""Worker customizations: the consumer class (CELERY_WORKER_CONSUMER) and a safer `conf` command."""

import logging
from collections.abc import Mapping

from celery.app.utils import HIDDEN_SETTINGS
from celery.utils.serialization import jsonify, strtobool
from celery.worker.consumer import Consumer
from celery.worker.control import inspect_command
from kombu.utils.encoding import safe_repr
from kombu.utils.url import maybe_sanitize_url

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


def _censor(value, key=""):
    """Masks secrets in a settings table: Celery's own filter misses namespaced keys.

    Celery censors `broker_url`, but with Django settings the key is CELERY_BROKER_URL,
    which it leaves as is (password included), and Flower shows it to every operator.
    Here every URL loses its password, whatever its key.
    """
    if isinstance(value, Mapping):
        return {k: _censor(v, str(k)) for k, v in value.items()}
    if HIDDEN_SETTINGS.search(key):
        return "********"
    if isinstance(value, str) and "://" in value:
        return maybe_sanitize_url(value, mask="********")
    return value


@inspect_command(alias="dump_conf", signature="[include_defaults=False]", args=[("with_defaults", strtobool)])
def conf(state, with_defaults=False, **kwargs):
    """List configuration, with every URL's password masked."""
    table = _censor(state.app.conf.table(with_defaults=with_defaults))
    return jsonify(
        table,
        keyfilter=lambda k: isinstance(k, str) and not k.startswith("__"),
        unknown_type_filter=safe_repr,
    )
