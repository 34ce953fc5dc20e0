"""The username django-axes counts failures for: what was typed, cut to the longest username the
User model allows (axes stores it in a 255-character column, and a 100,000-character username
made PostgreSQL refuse the insert: a 500 instead of the login form)."""

from __future__ import annotations

from django.contrib.auth import get_user_model


def attempted_username(request, credentials: dict | None) -> str:
    field = get_user_model().USERNAME_FIELD
    typed = (credentials or {}).get(field) or request.POST.get(field) or ""
    return str(typed)[: get_user_model()._meta.get_field(field).max_length]
