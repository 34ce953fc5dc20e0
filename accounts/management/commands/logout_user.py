"""End every login of a user, in every browser and every process (reason "revoked")."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts import logins
from realtime.groups import REASON_REVOKED


class Command(BaseCommand):
    help = "Log a user out everywhere: end all their logins and close their open tabs."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")

    def handle(self, *args, username: str, **options) -> None:
        User = get_user_model()
        try:
            user = User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None
        ended = logins.end_user_logins(user, REASON_REVOKED)
        self.stdout.write(f"Ended {len(ended)} login(s) of {username}.")
