"""How django-axes is set up here: the username it counts failures for, and its handler."""

from __future__ import annotations

from axes.conf import settings as axes_settings
from axes.handlers.database import AxesDatabaseHandler
from django.contrib.auth import get_user_model


class LoginCleanupHandler(AxesDatabaseHandler):
    """django-axes' database handler, without its clean-up of expired attempts on every logout.

    That clean-up is a `SELECT` of every attempt past the cool-off, then a transaction to delete
    them, even when there are none: three of a logout request's eight database round trips. Every
    login and every failed login still cleans up, and a lockout is decided from unexpired attempts
    only, so nothing else changes. With the access log on (`AXES_DISABLE_ACCESS_LOG = False`),
    axes' own logout handler runs whole, as it records the logout time."""

    def user_logged_out(self, sender, request, user, **kwargs):
        if not axes_settings.AXES_DISABLE_ACCESS_LOG:
            super().user_logged_out(sender, request, user, **kwargs)


def attempted_username(request, credentials: dict | None) -> str:
    """What was typed, cut to the longest username the User model allows (axes stores it in a
    255-character column, and a 100,000-character username made PostgreSQL refuse the insert: a
    500 instead of the login form)."""
    field = get_user_model().USERNAME_FIELD
    typed = (credentials or {}).get(field) or request.POST.get(field) or ""
    return str(typed)[: get_user_model()._meta.get_field(field).max_length]
