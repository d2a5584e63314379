from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self):
        from jobs import conf

        conf.apply_defaults()  # the platform's settings the project leaves unset (jobs/conf.py)
        # Replaces Celery's `conf` inspect command with one that masks secrets.
        from jobs import remote_control, tracing  # noqa: F401 - remote_control registers on import

        tracing.configure()  # only with OTEL_EXPORTER_OTLP_ENDPOINT: nothing is exported otherwise
