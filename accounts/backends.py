"""The authentication backend: Django's `ModelBackend`, whose user can come from the login check.

Every authenticated request read its user (Django's `get_user`, through the backend) and then its
`Login` row (`LiveLoginMiddleware`): two queries, each built by the ORM. The middleware now reads
the login with its whole user in one query and hands that user over for the duration of Django's
`get_user` (`user_already_read`); `LoginModelBackend.get_user` returns it instead of reading it
again. Everything else is Django's: which backend the session names, `user_can_authenticate`, the
session's auth hash and its fallbacks, the flush on a mismatch. Without a user handed over (no
active login, another backend, code outside a request) it is `ModelBackend` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.contrib.auth.backends import ModelBackend

BACKEND_PATH = "accounts.backends.LoginModelBackend"
# What sessions made before this backend name (`current_path`).
MODEL_BACKEND_PATH = "django.contrib.auth.backends.ModelBackend"

_user_read: ContextVar = ContextVar("user_read_with_the_login", default=None)


class LoginModelBackend(ModelBackend):
    def get_user(self, user_id):
        user = _user_read.get()
        if user is None or user.pk != user_id:
            return super().get_user(user_id)
        return user if self.user_can_authenticate(user) else None


def current_path(backend_path: str | None) -> str | None:
    """The backend a session's backend path stands for now. Sessions made before this backend
    replaced `ModelBackend` (which it extends) name `ModelBackend`, no longer listed: Django would
    make them anonymous. Requests carry them over (accounts.middleware), sockets read them so."""
    enabled = settings.AUTHENTICATION_BACKENDS
    replaced = backend_path == MODEL_BACKEND_PATH and backend_path not in enabled
    return BACKEND_PATH if replaced and BACKEND_PATH in enabled else backend_path


@contextmanager
def user_already_read(user) -> Iterator[None]:
    """While this block runs, `LoginModelBackend.get_user` answers with `user` (if it is the user
    asked for) instead of a query."""
    token = _user_read.set(user)
    try:
        yield
    finally:
        _user_read.reset(token)
