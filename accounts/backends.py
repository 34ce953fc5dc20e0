"""The authentication backend: Django's `ModelBackend`, whose user can come from the login check.

Every authenticated request read its user (Django's `get_user`, through the backend) and then its
`Login` row (`LiveLoginMiddleware`), and so did every socket connect: two queries. Both now read
the login with its user in one query (`read_login_with_user`) and hand that user over for the
duration of the framework's `get_user` (Django's for requests, Channels' for sockets;
`user_already_read`); `LoginModelBackend.get_user` returns it instead of reading it again.
Everything else is the framework's: which backend the session names, `user_can_authenticate`,
the session's auth hash (and, for requests, its fallbacks), the flush on a mismatch. Without a
user handed over (no active login, another backend, code outside a request) it is `ModelBackend`
itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ValidationError

from accounts import logins
from realtime.groups import LOGIN_ID_SESSION_KEY, is_valid_id

BACKEND_PATH = "accounts.backends.LoginModelBackend"
# What sessions made before this backend name (`read_login_with_user` carries them over).
MODEL_BACKEND_PATH = "django.contrib.auth.backends.ModelBackend"

_user_read: ContextVar = ContextVar("user_read_with_the_login", default=None)


class LoginModelBackend(ModelBackend):
    def get_user(self, user_id):
        user = _user_read.get()
        if user is None or user.pk != user_id:
            return super().get_user(user_id)
        return user if self.user_can_authenticate(user) else None


def read_login_with_user(session, user_fields: tuple[str, ...] | None = None):
    """(True, the session's active login with its user) or (True, None) when the login is not
    active, for a session whose backend is this one; (False, None) when nothing was read (another
    backend, no login, no user). `user_fields`: only those of the user (all by default)."""
    wanted = _login_to_read(session)
    if wanted is None:
        return False, None
    return True, logins.active_login_with_user(*wanted, user_fields)


def read_logins_with_users(sessions: list, user_fields: tuple[str, ...]) -> list[tuple]:
    """`read_login_with_user` for each of many sessions (a batch of connecting sockets), the
    logins in one query."""
    wanted = [_login_to_read(session) for session in sessions]
    pairs = [pair for pair in wanted if pair is not None]
    found = iter(logins.active_logins_with_users(pairs, user_fields))
    return [(False, None) if pair is None else (True, next(found)) for pair in wanted]


def _login_to_read(session) -> tuple[object, object] | None:
    """(login id, user id) of a session whose backend is this one, else None.

    Sessions made before this backend replaced `ModelBackend` (which it extends) name
    `ModelBackend`, no longer listed, and Django would make them anonymous: they are carried over
    here (saved with a request's response; a socket's session is never saved, so a tab open
    across the upgrade reconnects as itself before any request)."""
    backend = session.get(BACKEND_SESSION_KEY)
    enabled = settings.AUTHENTICATION_BACKENDS
    if backend == MODEL_BACKEND_PATH and backend not in enabled and BACKEND_PATH in enabled:
        session[BACKEND_SESSION_KEY] = backend = BACKEND_PATH
    login_id = session.get(LOGIN_ID_SESSION_KEY)
    if backend != BACKEND_PATH or backend not in enabled or not is_valid_id(login_id):
        return None
    try:
        return login_id, get_user_model()._meta.pk.to_python(session[SESSION_KEY])
    except (KeyError, ValidationError):  # left to the framework's `get_user`
        return None


@contextmanager
def user_already_read(user) -> Iterator[None]:
    """While this block runs, `LoginModelBackend.get_user` answers with `user` (if it is the user
    asked for) instead of a query."""
    token = _user_read.set(user)
    try:
        yield
    finally:
        _user_read.reset(token)
