"""The user admin, with a "Log out everywhere" action; logins are listed read-only."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from accounts import logins
from accounts.models import Login
from realtime.groups import REASON_REVOKED

User = get_user_model()


@admin.action(description="Log out everywhere")
def log_out_everywhere(modeladmin, request, queryset) -> None:
    ended = sum(len(logins.end_user_logins(user, REASON_REVOKED)) for user in queryset)
    modeladmin.message_user(request, f"Ended {ended} login(s).", messages.SUCCESS)


admin.site.unregister(User)


@admin.register(User)
class LiveUserAdmin(UserAdmin):
    actions = [log_out_everywhere]


@admin.register(Login)
class LoginAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "ip_address", "created_at", "last_active", "ended_at"]
    list_filter = ["end_reason"]
    exclude = ["session_key"]  # a bearer secret: never shown
    readonly_fields = [f.name for f in Login._meta.fields if f.name != "session_key"]

    def has_add_permission(self, request) -> bool:
        return False
