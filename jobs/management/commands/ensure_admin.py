import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Development only: creates the superuser 'admin' with a generated password, kept in "
        "var/admin-password, and prints the credentials. Leaves an existing user alone."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):
        password_file = Path(settings.BASE_DIR) / "var" / "admin-password"
        User = get_user_model()
        if not password_file.exists() or not User.objects.filter(username=username).exists():
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password = secrets.token_urlsafe(12)
            user, _ = User.objects.get_or_create(username=username, defaults={"email": "admin@example.com"})
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            password_file.write_text(password)
            password_file.chmod(0o600)
        password = password_file.read_text().strip()
        self.stdout.write(f"admin user: {username} / {password}")
