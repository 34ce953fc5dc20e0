"""Holds every request to the `Login` table, and keeps the table in step with the session.

Runs after `AuthenticationMiddleware`. A session whose login has ended (revoked, logged out
everywhere, expired, ...) is flushed and the request goes on as anonymous: an old cookie, replayed
under any session backend, opens nothing.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from accounts import backends, logins
from accounts.models import Login
from realtime import broadcast
from realtime.groups import (
    BROWSER_COOKIE,
    LOGIN_ID_SESSION_KEY,
    REASON_EXPIRED,
    is_valid_id,
    new_id,
)

LAST_ACTIVE_RESOLUTION = timedelta(minutes=1)  # at most one write per login per minute
EXPIRY_PUSH_THRESHOLD = timedelta(seconds=1)
BROWSER_COOKIE_AGE = 60 * 60 * 24 * 365


class LiveLoginMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        self._identify_browser(request)
        self._check_login(request)
        response = self.get_response(request)
        self._sync_login(request)
        if request.live_browser_is_new:
            response.set_cookie(
                BROWSER_COOKIE,
                request.live_browser_id,
                max_age=BROWSER_COOKIE_AGE,
                secure=settings.SESSION_COOKIE_SECURE,
                httponly=True,
                samesite="Lax",
            )
        return response

    def _identify_browser(self, request) -> None:
        browser_id = request.COOKIES.get(BROWSER_COOKIE)
        request.live_browser_is_new = not is_valid_id(browser_id)
        request.live_browser_id = new_id() if request.live_browser_is_new else browser_id

    def _check_login(self, request) -> None:
        request.live_login = None
        request.live_previous_login_id = None
        login_id = request.session.get(LOGIN_ID_SESSION_KEY)
        read, login = backends.read_login_with_user(request.session)
        # Django's `get_user` decides who the user is, with the user read above if there is one
        # (accounts/backends.py): one query for both where there were two.
        with backends.user_already_read(login.user if login is not None else None):
            if not request.user.is_authenticated:
                return
        request.live_previous_login_id = login_id
        if not read:
            login = logins.active_login(login_id, request.user.pk)
        if login is None:
            if is_valid_id(login_id):
                # Past its expiry but not yet ended by a watcher: end it now, with its reason.
                logins.end_logins(
                    Login.objects.filter(id=login_id, expires_at__lte=timezone.now()),
                    REASON_EXPIRED,
                )
            request.session.flush()
            request.user = AnonymousUser()
            return
        request.live_login = login

    def _sync_login(self, request) -> None:
        """After the view: record a new login's final state, or follow the session's changes."""
        started = getattr(request, "live_login_started", None)
        if started is not None:
            self._finish_start(request, started)
            return
        login = request.live_login
        if login is None or not request.user.is_authenticated:
            return  # anonymous, or logged out during this request
        session = request.session
        changes = {}
        if session.modified:
            expires_at = session.get_expiry_date()
            if abs(expires_at - login.expires_at) >= EXPIRY_PUSH_THRESHOLD:
                changes["expires_at"] = expires_at
            key = logins.server_side_key(session)
            if key and key != login.session_key:
                changes["session_key"] = key
        now = timezone.now()
        if now - login.last_active >= LAST_ACTIVE_RESOLUTION:
            changes["last_active"] = now
        if changes:
            Login.objects.filter(id=login.id).update(**changes)
        if "expires_at" in changes:
            broadcast.expiry_moved(login_id=login.id, expires_at=changes["expires_at"])

    def _finish_start(self, request, login: Login) -> None:
        session = request.session
        login.expires_at = session.get_expiry_date()
        login.session_key = logins.server_side_key(session)
        Login.objects.filter(id=login.id).update(
            expires_at=login.expires_at, session_key=login.session_key
        )
        broadcast.browser_logged_in(
            browser_id=request.live_browser_id,
            login_id=login.id,
            user_id=login.user_id,
            username=request.user.get_username(),
            expires_at=login.expires_at,
        )
