from django.apps import AppConfig


class EmailsConfig(AppConfig):
    name = "emails"

    def ready(self) -> None:
        from emails import receivers  # noqa: F401 - connects to invoices' signals
