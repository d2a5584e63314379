import getpass

from django.core.management.base import BaseCommand, CommandError

from jobs import dead_letters
from jobs.models import DeadLetter, DeadLetterState


class Command(BaseCommand):
    help = "Lists, replays and discards dead letters (the same as the admin's actions)."

    def add_arguments(self, parser):
        parser.add_argument("--by", default=None, help="Who acts (recorded); default: cli:<your login>.")
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="List dead letters.")
        listing.add_argument(
            "--state", default=DeadLetterState.OPEN, choices=[*DeadLetterState.values, "all"]
        )
        listing.add_argument("--queue", help="Only those dead-lettered from this queue.")
        listing.add_argument("--limit", type=int, default=50)
        replay = sub.add_parser("replay", help="Replay dead letters to their original queue.")
        replay.add_argument("ids", nargs="*", type=int)
        replay.add_argument("--all", action="store_true", help="Every open dead letter (of --queue).")
        replay.add_argument("--queue", help="With --all: only this queue's.")
        discard = sub.add_parser("discard", help="Discard dead letters.")
        discard.add_argument("ids", nargs="+", type=int)

    def handle(self, *args, action: str, by: str | None, **options):
        by = by or f"cli:{getpass.getuser()}"
        if action == "list":
            return self._list(options["state"], options.get("queue"), options["limit"])
        if action == "replay":
            ids = options["ids"]
            if options["all"]:
                if ids:
                    raise CommandError("Give ids or --all, not both.")
                open_letters = DeadLetter.objects.filter(state=DeadLetterState.OPEN)
                if options.get("queue"):
                    open_letters = open_letters.filter(queue=options["queue"])
                ids = list(open_letters.order_by("first_seen").values_list("pk", flat=True))
            elif not ids:
                raise CommandError("Name the dead letters to replay (ids), or use --all [--queue Q].")
            return self._each(ids, lambda pk: dead_letters.replay(pk, by), "replayed")
        return self._each(options["ids"], lambda pk: self._discard(pk, by), "discarded")

    def _discard(self, pk: int, by: str) -> None:
        if not dead_letters.discard(pk, by):
            raise dead_letters.ReplayError(f"Dead letter {pk} is not open (or does not exist).")

    def _each(self, ids, act, verb: str) -> None:
        failures = 0
        for pk in ids:
            try:
                act(pk)
            except dead_letters.ReplayError as exc:
                failures += 1
                self.stderr.write(f"{pk}: {exc}")
            else:
                self.stdout.write(f"{pk}: {verb}")
        self.stdout.write(f"{len(ids) - failures} {verb}, {failures} skipped")
        if failures and failures == len(ids):
            raise CommandError(f"Nothing was {verb}.")

    def _list(self, state: str, queue: str | None, limit: int) -> None:
        letters = DeadLetter.objects.all() if state == "all" else DeadLetter.objects.filter(state=state)
        if queue:
            letters = letters.filter(queue=queue)
        rows = list(letters.order_by("-last_seen")[:limit])
        if not rows:
            self.stdout.write("no dead letters")
            return
        self.stdout.write(f"{'id':>6}  {'state':9} {'queue':9} {'reason':9} {'task':28} {'job':36}  error")
        for d in rows:
            self.stdout.write(
                f"{d.pk:>6}  {d.state:9} {d.queue or '-':9} {d.reason or '-':9} {d.task_name or '-':28.28} "
                f"{str(d.job_id or '-'):36}  {d.error[:70]}"
            )
