from django.core.management.base import BaseCommand, CommandError

from jobs import topology
from jobs.app import celery_app
from jobs.broker import queues


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
        app = celery_app()
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1)
                if fix or recreate:
                    before = queues.verify(connection)
                    _refuse_exchange_drift(before, connection.virtual_host)
                    drifted = [r.name for r in before if r.status == "drift"] if fix else []
                    recreate = [*recreate, *(name for name in drifted if name not in recreate)]
                for name in recreate:
                    try:
                        moved = queues.recreate(connection, name)
                    except ValueError as exc:
                        raise CommandError(str(exc)) from None
                    self.stdout.write(f"recreated {name}: {moved} message(s) carried over")
                reports = queues.verify(connection)
        except CommandError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise CommandError(
                f"Cannot reach RabbitMQ ({exc.__class__.__name__}: {exc}). "
                "Is it running? Check CELERY_BROKER_URL."
            ) from None
        _refuse_exchange_drift(reports, connection.virtual_host)
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


def _refuse_exchange_drift(reports, vhost: str) -> None:
    """An exchange that exists with another type or arguments: --fix and --recreate
    migrate queues only, so say what to do instead of failing on it as a queue."""
    exchanges = {topology.JOBS_EXCHANGE, topology.DEAD_LETTER_EXCHANGE}
    for report in reports:
        if report.status == "drift" and report.name in exchanges:
            raise CommandError(
                f"The exchange {report.name!r} exists with other settings than the topology "
                f"declares ({report.detail}). Exchanges are not migrated by this command: with "
                "publishers and workers stopped, delete it (RabbitMQ's management UI, or "
                f"`rabbitmqadmin --vhost={vhost} delete exchange name={report.name}`), then run jobs_topology "
                "again, which declares it and its bindings anew. Queues and their messages are kept."
            )
