"""Make sure a local admin login exists; print how to log in.

The password is generated once and kept in ``var/admin-password`` (mode 600), so the run command can
print it every time without ever committing or logging a fixed password.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the local admin user if missing and print the login."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args, **options) -> None:
        username = options["username"]
        password_file = Path(settings.VAR_DIR) / "admin-password"
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user_model.objects.create_superuser(username=username, email="", password=password)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            self.stdout.write(f"Created admin user '{username}'.")
        if password_file.exists():
            self.stdout.write(
                f"Admin login: user '{username}', password in {password_file} "
                f"(cat {password_file}); change it with: python manage.py changepassword {username}"
            )
        else:
            self.stdout.write(f"Admin user '{username}' exists; reset its password with: "
                              f"python manage.py changepassword {username}")
        self.stdout.write(self._rpc_token_line())

    @staticmethod
    def _rpc_token_line() -> str:
        """Where the bearer token for /rpc and /tools/voice_call is (generated once if needed)."""
        from calls.config import ConfigError
        from calls.interfaces.rpc_auth import token_source

        try:
            source = token_source()
        except ConfigError:
            return "RPC token: not available until the voice-call config is valid (voicecall setup)."
        return (f"RPC token (for /rpc and /tools/voice_call, header 'Authorization: Bearer <token>'): "
                f"{source}")
