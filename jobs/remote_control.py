"""Celery's `conf` remote-control command, replaced by one that masks every secret.

Registered by jobs.apps.JobsConfig.ready, in every process that loads the platform:
Flower calls it on the workers to show their configuration to operators.
"""

from collections.abc import Mapping

from celery.app.utils import HIDDEN_SETTINGS
from celery.utils.serialization import jsonify, strtobool
from celery.worker.control import inspect_command
from kombu.utils.encoding import safe_repr
from kombu.utils.url import maybe_sanitize_url


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
