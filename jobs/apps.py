from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self):
        # Replaces Celery's `conf` inspect command with one that masks secrets.
        from jobs import remote_control  # noqa: F401
