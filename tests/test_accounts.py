"""Login, logout and home over HTTP, with Django's test client."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.contrib.auth.hashers import MD5PasswordHasher
from django.db import connections
from django.test import Client

from accounts.views import LOGINS_AT_ONCE

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
LOGOUT = "/accounts/logout/"


def login(client: Client, *, password: str = "alice-pass-1234", **extra):
    return client.post(LOGIN, {"username": "alice", "password": password, **extra})


def test_login_redirects_home_and_authenticates(client, alice):
    response = login(client)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").context["user"] == alice
    assert b"Welcome, alice" in client.get("/").content


def test_wrong_password_rerenders_the_form_with_a_clear_error(client, alice):
    response = login(client, password="wrong")
    assert response.status_code == 200
    assert b"Invalid username or password." in response.content
    assert response.context["form"].data["username"] == "alice"
    assert not response.context["user"].is_authenticated


def test_unknown_user_gets_the_same_error(client, alice):
    response = client.post(LOGIN, {"username": "nobody", "password": "x"})
    assert b"Invalid username or password." in response.content


def test_without_remember_the_session_ends_when_the_browser_closes(client, alice):
    login(client)
    assert client.session.get_expire_at_browser_close()
    assert client.cookies[settings.SESSION_COOKIE_NAME]["max-age"] == ""


def test_with_remember_the_session_lasts_the_cookie_age(client, alice):
    login(client, remember="on")
    assert not client.session.get_expire_at_browser_close()
    assert client.session.get_expiry_age() == settings.SESSION_COOKIE_AGE
    assert client.cookies[settings.SESSION_COOKIE_NAME]["max-age"] == settings.SESSION_COOKIE_AGE


def test_safe_next_is_followed(client, alice):
    response = login(client, next="/session/")
    assert response["Location"] == "/session/"


@pytest.mark.parametrize(
    "target",
    ["https://evil.example", "//evil.example", "/\\evil.example", "http://evil.example/x"],
)
def test_unsafe_next_falls_back_to_home(client, alice, target):
    response = login(client, next=target)
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_session_key_changes_at_login(client, alice):
    client.get(LOGIN)
    client.post("/session/set/", {"key": "cart", "value": "[1]"})
    before = client.cookies[settings.SESSION_COOKIE_NAME].value
    login(client)
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert before and after and before != after
    assert client.session["cart"] == [1]  # the data survives, under the new key


def test_home_greets_guest(client):
    response = client.get("/")
    assert b"Welcome, Guest" in response.content
    assert b'id="live-status"' in response.content


def test_home_has_a_csrf_protected_post_logout_form(client, alice):
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert '<form method="post" action="/accounts/logout/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'href="/accounts/logout/"' not in html


def test_every_page_loads_the_live_status_module(client):
    for path in ("/", LOGIN, "/session/"):
        html = client.get(path).content.decode()
        assert '<script type="module" src="/static/realtime/live-status.js">' in html


def test_logout_by_get_is_refused(client, alice):
    client.force_login(alice)
    assert client.get(LOGOUT).status_code == 405
    assert client.get("/").context["user"].is_authenticated


def test_logout_without_csrf_token_is_refused(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(LOGOUT).status_code == 403
    assert client.get("/").context["user"].is_authenticated


def test_logout_flushes_the_session_and_redirects_to_login(client, alice):
    login(client)
    client.post("/session/set/", {"key": "cart", "value": "[1]"})
    old_key = client.session.session_key
    response = client.post(LOGOUT)
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert not client.get("/").context["user"].is_authenticated
    assert "cart" not in client.session
    assert client.session.session_key != old_key


def test_session_cookie_is_httponly_and_lax(client, alice):
    login(client)
    morsel = client.cookies[settings.SESSION_COOKIE_NAME]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert client.cookies[settings.CSRF_COOKIE_NAME]["samesite"] == "Lax"


def test_password_change_requires_login(client):
    response = client.get("/accounts/password_change/")
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN + "?next=")


def test_login_required_pages_are_marked_for_the_client(client, alice):
    client.force_login(alice)
    assert b"data-login-required" in client.get("/accounts/password_change/").content
    assert b"data-login-required" not in client.get("/").content


class SlowHasher(MD5PasswordHasher):
    """A password check that takes 0.2 s, as the production hasher's takes a third of a second,
    and counts how many run at once."""

    algorithm = "slow_md5"
    lock = threading.Lock()
    running = most = 0

    def verify(self, password: str, encoded: str) -> bool:
        with self.lock:
            SlowHasher.running += 1
            SlowHasher.most = max(SlowHasher.most, SlowHasher.running)
        try:
            time.sleep(0.2)
            return super().verify(password, encoded)
        finally:
            with self.lock:
                SlowHasher.running -= 1


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_logins_checks_a_few_passwords_at_a_time_and_all_succeed(
    settings, django_user_model
):
    """A login holds a pooled database connection through its password check: with every
    attempt of a burst at once, the pool ran dry and later ones answered 500."""
    settings.PASSWORD_HASHERS = ["tests.test_accounts.SlowHasher"]
    burst = LOGINS_AT_ONCE + 5
    for n in range(burst):
        django_user_model.objects.create_user(f"burst{n}", password="burst-pass-1234")

    def log_in(n: int) -> int:
        try:
            data = {"username": f"burst{n}", "password": "burst-pass-1234"}
            return Client().post(LOGIN, data).status_code
        finally:
            connections.close_all()  # this thread's

    with ThreadPoolExecutor(burst) as threads:
        codes = list(threads.map(log_in, range(burst)))
    assert codes == [302] * burst
    assert SlowHasher.most == LOGINS_AT_ONCE
