"""The user of a request, read with its login in one query (accounts/backends.py), with Django's
own checks still deciding who the user is."""

from __future__ import annotations

import pytest
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.backends import BACKEND_PATH, MODEL_BACKEND_PATH
from accounts.logins import session_store_class
from realtime.auth import _resolve

pytestmark = pytest.mark.django_db

USER_TABLE, LOGIN_TABLE = '"auth_user"', '"accounts_login"'


def logged_in(alice) -> Client:
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-pass-1234"})
    assert response.status_code == 302
    return client


def user_and_login_queries(client: Client, path: str = "/session/") -> tuple[list[str], object]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    sql = [q["sql"] for q in queries.captured_queries]
    return [q for q in sql if USER_TABLE in q or LOGIN_TABLE in q], response


def test_a_request_reads_its_user_and_login_in_one_query(alice):
    client = logged_in(alice)
    assert client.session[BACKEND_SESSION_KEY] == BACKEND_PATH
    queries, response = user_and_login_queries(client, "/")
    assert len(queries) == 1, queries  # was two: Django's user, then the login check
    assert USER_TABLE in queries[0] and LOGIN_TABLE in queries[0]
    assert response.context["user"] == alice
    user = response.context["user"]
    assert not user.get_deferred_fields()  # the whole user
    # Converted from the database as the ORM does (SQLite keeps dates as text).
    assert user.date_joined == alice.date_joined and user.date_joined.tzinfo is not None
    assert user.is_active is True


def test_a_changed_password_hash_still_logs_the_session_out(alice):
    """Django's `get_user` still checks the session's auth hash on the user read with the login."""
    client = logged_in(alice)
    alice.set_password("another-pass-5678")
    alice.save()  # not through a view: the session keeps the old hash
    response = client.get("/")
    assert not response.context["user"].is_authenticated
    assert HASH_SESSION_KEY not in client.session  # flushed by Django's get_user


def test_an_inactive_user_is_anonymous(alice, django_user_model):
    client = logged_in(alice)
    django_user_model.objects.filter(pk=alice.pk).update(is_active=False)  # no signal: login stays
    assert not client.get("/").context["user"].is_authenticated


def test_a_session_signed_with_a_fallback_secret_key_is_kept_and_re_signed(alice, settings):
    client = logged_in(alice)
    old_hash = client.session[HASH_SESSION_KEY]
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40
    response = client.get("/")
    assert response.context["user"] == alice
    assert client.session[HASH_SESSION_KEY] not in ("", old_hash)


def test_a_session_from_before_this_backend_is_read_as_its_own(alice):
    """Sessions made when `ModelBackend` authenticated name it; it is no longer listed, and they
    would be anonymous. They are carried over to `LoginModelBackend`, which extends it."""
    client = logged_in(alice)
    session = client.session
    session[BACKEND_SESSION_KEY] = MODEL_BACKEND_PATH
    session.save()
    queries, response = user_and_login_queries(client, "/")
    assert response.context["user"] == alice
    assert len(queries) == 1
    assert client.session[BACKEND_SESSION_KEY] == BACKEND_PATH


def test_a_socket_whose_session_is_from_before_this_backend_is_authenticated(alice):
    """A tab open across the upgrade reconnects before any request has carried its session over."""
    client = logged_in(alice)
    session = client.session
    session[BACKEND_SESSION_KEY] = MODEL_BACKEND_PATH
    session.save()
    user, login = _resolve.func({"session": session_store_class()(session.session_key)})
    assert user == alice and login is not None


def test_an_ended_login_is_anonymous_and_its_session_flushed(alice):
    client = logged_in(alice)
    other = logged_in(alice)
    assert other.post("/accounts/logout/everywhere/").status_code == 302
    response = client.get("/")
    assert not response.context["user"].is_authenticated
    assert "_auth_user_id" not in client.session
