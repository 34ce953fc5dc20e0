"""Login, home and session-data views. Logout is Django's own `LogoutView` (POST only)."""

from __future__ import annotations

import json
import threading

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.forms import LoginForm, SessionExpiryForm, SessionKeyForm, SessionSetForm
from realtime.groups import BROWSER_SESSION_KEY

# Login attempts that run at once in a process (`SessionLoginView.post`). The database pool holds
# 8 connections (settings), the connect threads take up to 4 (realtime.auth.CONNECT_THREADS) and
# the login watcher's checks 1: this leaves the rest of the pool's connections to the other views.
LOGINS_AT_ONCE = 3
_login_slots = threading.BoundedSemaphore(LOGINS_AT_ONCE)


class SessionLoginView(LoginView):
    """Django's login view; "Keep me signed in" decides how long the session lives."""

    form_class = LoginForm

    def post(self, request, *args, **kwargs):
        """Django's, `LOGINS_AT_ONCE` at a time per process. An attempt holds a pooled database
        connection from django-axes' lockout check, through the password hash (a third of a
        second of a core), to its end: 60 attempts at once on one core kept the pool's
        connections past its 10 s timeout, and 28 of them answered 500 (docs/reliability.md).
        The others wait here, each on its request's own thread, holding no connection; the
        hashes on one core take as long either way."""
        with _login_slots:
            return super().post(request, *args, **kwargs)

    def form_valid(self, form: LoginForm) -> HttpResponse:
        response = super().form_valid(form)  # logs in: new session key, new login id
        # None: SESSION_COOKIE_AGE. 0: the session ends when the browser closes.
        self.request.session.set_expiry(None if form.cleaned_data["remember"] else 0)
        return response


def home(request: HttpRequest) -> HttpResponse:
    # Every visitor gets a session at once, so all tabs of a browser share it before any login.
    request.session.setdefault(BROWSER_SESSION_KEY, request.live_browser_id)
    return render(request, "home.html")


def session_data(request: HttpRequest) -> HttpResponse:
    return _render_session_page(request)


@require_POST
def session_set(request: HttpRequest) -> HttpResponse:
    form = SessionSetForm(request.POST)
    if not form.is_valid():
        return _render_session_page(request, set_form=form, status=400)
    request.session[form.cleaned_data["key"]] = form.cleaned_data["value"]
    messages.success(request, f"Set {form.cleaned_data['key']}.")
    return redirect("session_data")


@require_POST
def session_delete(request: HttpRequest) -> HttpResponse:
    form = SessionKeyForm(request.POST)
    if form.is_valid() and form.cleaned_data["key"] not in request.session:
        form.add_error("key", "The session has no such key.")
    if not form.is_valid():
        return _render_session_page(request, delete_form=form, status=400)
    del request.session[form.cleaned_data["key"]]
    messages.success(request, f"Deleted {form.cleaned_data['key']}.")
    return redirect("session_data")


@require_POST
def session_clear(request: HttpRequest) -> HttpResponse:
    # logout() flushes the session and sends user_logged_out, so clearing a logged-in session is
    # broadcast to its open tabs exactly like a logout.
    logout(request)
    messages.success(request, "Session cleared.")
    return redirect("session_data")


@require_POST
def session_expiry(request: HttpRequest) -> HttpResponse:
    form = SessionExpiryForm(request.POST)
    if not form.is_valid():
        return _render_session_page(request, expiry_form=form, status=400)
    request.session.set_expiry(form.cleaned_data["seconds"])
    messages.success(request, "Expiry updated.")
    return redirect("session_data")


def _render_session_page(
    request: HttpRequest,
    *,
    set_form: SessionSetForm | None = None,
    delete_form: SessionKeyForm | None = None,
    expiry_form: SessionExpiryForm | None = None,
    status: int = 200,
) -> HttpResponse:
    session = request.session
    items = sorted(
        (key, json.dumps(value, ensure_ascii=False))
        for key, value in session.items()
        if not key.startswith("_")
    )
    context = {
        "items": items,
        "expires_at_browser_close": session.get_expire_at_browser_close(),
        "expires_at": session.get_expiry_date(),
        "set_form": set_form or SessionSetForm(),
        "delete_form": delete_form or SessionKeyForm(),
        "expiry_form": expiry_form or SessionExpiryForm(),
    }
    return render(request, "accounts/session_data.html", context, status=status)
