"""The sessions page: the user's active logins, revoke one, log out everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import PasswordChangeView
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from ua_parser import parse

from accounts import logins
from accounts.models import Login
from realtime import broadcast
from realtime.groups import REASON_LOGOUT_EVERYWHERE, REASON_PASSWORD_CHANGED, REASON_REVOKED


@dataclass
class LoginRow:
    id: str
    browser: str
    os: str
    ip_address: str | None
    created_at: datetime
    last_active: datetime
    tabs: int
    current: bool


def describe_user_agent(user_agent: str) -> tuple[str, str]:
    """("Firefox 128", "Windows 10") from a User-Agent header; "Unknown" where it says nothing."""
    parsed = parse(user_agent or "")
    browser, os = parsed.user_agent, parsed.os
    browser_text = " ".join(filter(None, [browser.family, browser.major])) if browser else ""
    os_text = " ".join(filter(None, [os.family, os.major])) if os else ""
    return browser_text or "Unknown browser", os_text or "Unknown OS"


def _rows(request: HttpRequest) -> list[LoginRow]:
    current = request.live_login.id if request.live_login else None
    active = list(
        Login.objects.filter(
            user=request.user, ended_at__isnull=True, expires_at__gt=timezone.now()
        ).order_by("-last_active")
    )
    tabs = broadcast.tab_counts([login.id for login in active])
    rows = []
    for login in active:
        browser, os = describe_user_agent(login.user_agent)
        rows.append(
            LoginRow(
                id=login.id,
                browser=browser,
                os=os,
                ip_address=login.ip_address,
                created_at=login.created_at,
                last_active=login.last_active,
                tabs=tabs.get(login.id, 0),
                current=login.id == current,
            )
        )
    rows.sort(key=lambda row: not row.current)  # this browser first
    return rows


@login_required
def sessions_page(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/sessions.html", {"rows": _rows(request)})


@login_required
def sessions_list(request: HttpRequest) -> HttpResponse:
    """The list alone, fetched by the page when the socket says it changed."""
    return render(request, "accounts/sessions_list.html", {"rows": _rows(request)})


@require_POST
@login_required
def revoke(request: HttpRequest, login_id: str) -> HttpResponse:
    if request.live_login and login_id == request.live_login.id:
        return HttpResponseBadRequest("This is the current login: use Log out instead.")
    ended = logins.end_logins(Login.objects.filter(id=login_id, user=request.user), REASON_REVOKED)
    if not ended:
        raise Http404("No such active login.")
    return redirect("sessions")


@require_POST
@login_required
def logout_everywhere(request: HttpRequest) -> HttpResponse:
    # This login too, so every tab hears it in one message (realtime.broadcast); the logout
    # signal then finds it ended already, and logout() flushes the session.
    logins.end_user_logins(request.user, REASON_LOGOUT_EVERYWHERE)
    logout(request)
    return redirect("login")


class LivePasswordChangeView(PasswordChangeView):
    """Django's view; every other login of the user ends, this one stays."""

    def form_valid(self, form):
        response = super().form_valid(form)  # saves, keeps this session (update_session_auth_hash)
        keep = self.request.live_login.id if self.request.live_login else None
        logins.end_user_logins(self.request.user, REASON_PASSWORD_CHANGED, keep=keep)
        return response
