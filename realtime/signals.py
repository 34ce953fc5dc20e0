"""Signal receivers: logins start and end with Django's own signals.

`user_logged_out` is sent *before* the session is flushed, so its receiver can still read which
login ended; it also catches logouts from code this project did not write. User saves and deletes
from anywhere (admin, shell, another process) end the user's logins when the account goes.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models.signals import post_save, pre_delete
from django.dispatch import receiver

from accounts import logins
from accounts.models import Login
from realtime.groups import LOGIN_ID_SESSION_KEY, REASON_DEACTIVATED, REASON_LOGOUT

User = get_user_model()


@receiver(user_logged_in, dispatch_uid="realtime.login_started")
def login_started(sender, request, user, **kwargs) -> None:
    """Runs inside `login()`, after the session key has been cycled."""
    request.live_login_started = logins.start_login(request, user)


@receiver(user_logged_out, dispatch_uid="realtime.login_ended")
def login_ended(sender, request, user, **kwargs) -> None:
    """Runs inside `logout()`, before `session.flush()`."""
    session = getattr(request, "session", None)
    login_id = session.get(LOGIN_ID_SESSION_KEY) if session is not None else None
    checked = getattr(request, "live_login", None)  # read by LiveLoginMiddleware, if it ran
    if checked is not None and checked.id == login_id:
        logins.end_checked_login(checked, REASON_LOGOUT)
    elif login_id:  # logout() without the middleware (test clients, code of its own)
        logins.end_logins(  # logout() flushes the session next
            Login.objects.filter(id=login_id), REASON_LOGOUT, delete_sessions=False
        )


@receiver(post_save, sender=User, dispatch_uid="realtime.user_deactivated")
def user_saved(sender, instance, created, **kwargs) -> None:
    if not created and not instance.is_active:
        logins.end_user_logins(instance, REASON_DEACTIVATED)


@receiver(pre_delete, sender=User, dispatch_uid="realtime.user_deleted")
def user_deleted(sender, instance, **kwargs) -> None:
    logins.end_user_logins(instance, REASON_DEACTIVATED)
