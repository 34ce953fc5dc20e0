"""Auth signal receivers: every login gets a fresh identifier, every logout is broadcast.

`user_logged_out` is sent *before* the session is flushed, so the receiver can still read the
login's identifier; it also catches logouts from code this project did not write.
"""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver

from realtime import broadcast
from realtime.groups import LOGIN_ID_SESSION_KEY, REASON_LOGOUT, new_login_id


@receiver(user_logged_in, dispatch_uid="realtime.login_started")
def login_started(sender, request, user, **kwargs) -> None:
    """Runs inside `login()`, after the session key has been cycled."""
    request.session[LOGIN_ID_SESSION_KEY] = new_login_id()


@receiver(user_logged_out, dispatch_uid="realtime.logout_broadcast")
def logout_broadcast(sender, request, user, **kwargs) -> None:
    """Runs inside `logout()`, before `session.flush()`."""
    session = getattr(request, "session", None)
    login_id = session.get(LOGIN_ID_SESSION_KEY) if session is not None else None
    if login_id:
        broadcast.login_ended(login_id=login_id, reason=REASON_LOGOUT)
