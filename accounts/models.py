"""One row per login: the server-side record that every request and socket checks.

A session cookie alone never proves a login: the login it carries must still be active here. This
is what lets a revoked or ended login stay ended under every session backend, `signed_cookies`
included, whose cookies Django alone cannot revoke.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Login(models.Model):
    # The random per-login identifier kept in the session (realtime.groups.new_login_id). It names
    # the login's channel-layer group and appears in revoke URLs; it is never the session key.
    id = models.CharField(primary_key=True, max_length=32, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # The session store key, for re-checks that the session still exists; "" for signed_cookies.
    session_key = models.CharField(max_length=64, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "ended_at"])]

    def __str__(self) -> str:
        state = f"ended ({self.end_reason})" if self.ended_at else "active"
        return f"login {self.id} of user {self.user_id}, {state}"
