from django.core.management.base import BaseCommand, CommandError

from jobs import topology


class Command(BaseCommand):
    help = (
        "Declares the RabbitMQ topology (exchanges, workload queues, dead-letter queue) "
        "and reports drift: a queue that exists with other arguments."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--recreate",
            metavar="QUEUE",
            action="append",
            default=[],
            help=(
                "Migrate QUEUE to the declared arguments, keeping its messages "
                "(stop the workers that consume it first). May be repeated."
            ),
        )
        parser.add_argument(
            "--fix",
            action="store_true",
            help=(
                "Migrate every queue that drifted, keeping its messages (stop the workers "
                "that consume them first). `make run` does this before it starts its workers."
            ),
        )

    def handle(self, *args, recreate: list[str], fix: bool, **options):
        from project.celery import app

        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1)
                if fix:
                    drifted = [r.name for r in topology.verify(connection) if r.status == "drift"]
                    recreate = [*recreate, *(name for name in drifted if name not in recreate)]
                for name in recreate:
                    try:
                        moved = topology.recreate(connection, name)
                    except ValueError as exc:
                        raise CommandError(str(exc)) from None
                    self.stdout.write(f"recreated {name}: {moved} message(s) carried over")
                reports = topology.verify(connection)
        except CommandError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise CommandError(
                f"Cannot reach RabbitMQ ({exc.__class__.__name__}: {exc}). "
                "Is it running? Check CELERY_BROKER_URL."
            ) from None
        drift = [r for r in reports if r.status == "drift"]
        for report in reports:
            line = f"{report.status:8} {report.name}"
            if report.detail:
                line += f"  ({report.detail})"
            self.stdout.write(line)
        if drift:
            names = " ".join(f"--recreate {r.name}" for r in drift)
            raise CommandError(
                f"{len(drift)} queue(s) exist with other arguments than the topology declares. "
                f"Stop their workers, then run: python manage.py jobs_topology {names} "
                "(or --fix, for every drifted queue)"
            )
        self.stdout.write(self.style.SUCCESS("topology ok"))
