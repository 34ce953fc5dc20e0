"""Create the demo accounts alice and bob when they do not exist (debug only)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

DEMO_ACCOUNTS = {"alice": "alice-demo-pass", "bob": "bob-demo-pass"}


class Command(BaseCommand):
    help = "Create the demo accounts alice and bob if missing, and print their passwords."

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("Demo accounts are only created with DJANGO_DEBUG on.")
        User = get_user_model()
        for username, password in DEMO_ACCOUNTS.items():
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.save()
            if user.check_password(password):
                self.stdout.write(f"Demo account: {username} / {password}")
            else:
                self.stdout.write(f"Demo account: {username} (its password was changed)")
