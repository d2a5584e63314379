import psycopg2
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg2 import sql


class Command(BaseCommand):
    help = "Creates the PostgreSQL database named in DATABASE_URL if it does not exist."
    requires_system_checks = []

    def handle(self, *args, **options):
        db = settings.DATABASES["default"]
        params = {
            "dbname": "postgres",
            "user": db.get("USER") or None,
            "password": db.get("PASSWORD") or None,
            "host": db.get("HOST") or None,
            "port": db.get("PORT") or None,
        }
        try:
            conn = psycopg2.connect(**{k: v for k, v in params.items() if v is not None})
        except psycopg2.OperationalError as exc:
            raise CommandError(
                f"Cannot reach PostgreSQL at {db.get('HOST')}:{db.get('PORT')} ({exc}). "
                "Is it running? Check DATABASE_URL."
            ) from None
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]])
                if cursor.fetchone():
                    self.stdout.write(f"database {db['NAME']} exists")
                    return
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
        finally:
            conn.close()
        self.stdout.write(self.style.SUCCESS(f"created database {db['NAME']}"))
