"""Settings for the job platform, read from the environment (django-environ).

Every address and credential has a default that works on a development machine
(docs/configuration.md lists them). DEBUG is off unless DJANGO_DEBUG asks for it,
and then only is a missing DJANGO_SECRET_KEY tolerated.
"""

import os
from datetime import timedelta
from pathlib import Path

import django
import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file is optional; real environment variables win over it.
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off. "
            "Set it in the environment or in .env (see .env.example)."
        )
    SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG"

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",  # the ledger's ArrayField (Django 6 checks for it)
    "django_celery_beat",
    # Django 6 has the task API built in (django.tasks); 5.2 takes it from the backport.
    *(["django_tasks"] if django.VERSION < (6,) else []),
    "jobs",
    "invoices",
    "emails",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/jobs"),
}
# Web and relay processes keep their connection. Celery's Django fixup would close a
# worker's connection around every task (a reconnect per job); CELERY_DB_REUSE_MAX
# below keeps it for that many tasks. A job's advisory lock is released explicitly
# when it ends (jobs.ledger.lease), and the connection closed if that fails.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# TCP keepalives: a worker host that vanishes releases its job leases within about a
# minute instead of the kernel's two hours.
DATABASES["default"].setdefault("OPTIONS", {}).update(
    {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="jobs"),
        "TIMEOUT": env.int("CACHE_TIMEOUT", default=300),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(BASE_DIR / "media")))

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedStaticFilesStorage"
        )
    },
}

# Email: Django's SMTP backend; the development default is the local catcher.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="127.0.0.1")
EMAIL_PORT = env.int("EMAIL_PORT", default=1025)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="billing@example.com")

# Invoices: the seller block printed on every invoice.
INVOICE_SELLER_NAME = env.str("INVOICE_SELLER_NAME", default="Example Trading GmbH")
INVOICE_SELLER_ADDRESS = env.str(
    "INVOICE_SELLER_ADDRESS", default="Hauptstraße 1\n10115 Berlin\nGermany"
).replace("\\n", "\n")

# Production hardening; `manage.py check --deploy` is clean when DEBUG is off
# and the site is served over HTTPS (DJANGO_SECURE_SSL_REDIRECT defaults on then).
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 30)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Login throttling (django-axes) ------------------------------------------------
# AXES_FAILURE_LIMIT wrong passwords for one username from one address lock that
# username out from that address for AXES_COOLOFF_MINUTES; a successful login starts
# the count again. Username and address together: a guesser is stopped, yet no one can
# lock a colleague out from elsewhere (behind a proxy that hides client addresses,
# the lock is per username). Operators unlock with `manage.py axes_reset_username NAME`;
# attempts are kept in PostgreSQL and listed in the admin. Axes needs the request in
# authenticate(): tests log in with force_login() or through the login form.
INSTALLED_APPS += ["axes"]
AUTHENTICATION_BACKENDS = [
    # First, so a locked-out login is refused before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Last: turns the backend's refusal into the lockout answer (HTTP 429).
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_COOLOFF_MESSAGE = (
    "Too many failed login attempts: this account is locked from your address for "
    f"{AXES_COOLOFF_TIME.total_seconds() / 60:g} minutes. Try again later, or ask an "
    "administrator to unlock it."
)

# --- Celery (read by project/celery.py under the CELERY_ namespace) -----------------
# What the platform needs of Celery (acks late, prefetch 1, JSON only, publisher
# confirms, no result backend, its consumer) is set by jobs.app.configure, not here.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="amqp://guest:guest@127.0.0.1:5672//")
# Enqueue must never hang a request on a broker that does not answer.
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_HEARTBEAT = 30
# Soft limit only: a hard time limit requeues the message instead of dead-lettering it.
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=300)
CELERY_TASK_TIME_LIMIT = None
# Task events feed Flower.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The emails.send job's rate limit (across all workers, jobs/ratelimit.py) and the first
# wait of its retry policy (emails/tasks.py declares the rest).
EMAILS_RATE_LIMIT = env.str("EMAILS_RATE_LIMIT", default="10/s")
EMAILS_RETRY_BACKOFF_SECONDS = env.float("EMAILS_RETRY_BACKOFF_SECONDS", default=5.0)

# Django's task API (django_tasks, what Django 6 ships as django.tasks) runs on the platform.
TASKS = {"default": {"BACKEND": "jobs.django_tasks.LedgerBackend"}}

# --- The platform (jobs/) -----------------------------------------------------------
# Its settings and their defaults are jobs/conf.py's; this deployment takes any of
# them from the environment that sets it (docs/configuration.md).
JOBS_CELERY_APP = "project.celery:app"
_JOBS_FROM_ENV = {
    "JOBS_CONFIRM_TASK_EVENTS": env.bool,
    # e.g. "cache=16": a throughput queue's jobs run in batches of that many a pool process.
    "JOBS_THROUGHPUT_QUEUES": lambda name: {queue: int(size) for queue, size in env.dict(name).items()},
    "JOBS_THROUGHPUT_FLUSH_SECONDS": env.float,
    "JOBS_MAX_LOST_RUNS": env.int,
    # classic (one node) or quorum (a cluster). Changing it makes the queues drift: stop
    # the workers and run `manage.py jobs_topology --fix`.
    "JOBS_QUEUE_TYPE": env.str,
    "JOBS_QUORUM_DELIVERY_LIMIT": env.int,
    "JOBS_LEDGER_WAIT_SECONDS": env.float,
    "JOBS_LEASE_BUSY_RETRY_SECONDS": env.float,
    "JOBS_CANCEL_GRACE_SECONDS": env.float,
    "JOBS_CANCEL_CHECK_SECONDS": env.float,
    "JOBS_BULK_ACTION_BATCH": env.int,
    "JOBS_PROGRESS_SECONDS": env.float,
    "JOBS_TRACE_URL": env.str,
    "JOBS_PUBLISH_TIMEOUT_SECONDS": env.float,
    # e.g. "emails=20/s,invoices=300/m"
    "JOBS_QUEUE_RATE_LIMITS": env.dict,
    "JOBS_MAX_PAYLOAD_BYTES": env.int,
    "JOBS_RELAY_GRACE_SECONDS": env.float,
    "JOBS_RELAY_INTERVAL_SECONDS": env.float,
    "JOBS_RESCUE_AFTER_SECONDS": env.float,
    "JOBS_RESCUE_INTERVAL_SECONDS": env.float,
}
globals().update({name: read(name) for name, read in _JOBS_FROM_ENV.items() if name in os.environ})

# Flower reads FLOWER_BASIC_AUTH itself; bin/dev sets a development default.

# Bearer token for /metrics (Prometheus); without one, only staff sessions may read it.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "amqp": {"level": "WARNING"},
    },
}
