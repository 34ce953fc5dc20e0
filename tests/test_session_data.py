"""The session data page and its four POST endpoints."""

from __future__ import annotations

import json

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


ENDPOINTS = ["/session/set/", "/session/delete/", "/session/clear/", "/session/expiry/"]


def set_key(client: Client, key: str, value):
    return client.post("/session/set/", {"key": key, "value": json.dumps(value)})


@pytest.mark.parametrize(
    "value",
    [
        "john_doe",
        "",
        "ünïcode ✓",
        1,
        -7,
        2**40,
        [1, "two", [3]],
        {"a": 1, "b": {"c": [True, None]}},
    ],
)
def test_values_round_trip_exactly(client, value):
    response = set_key(client, "item", value)
    assert response.status_code == 302
    assert response["Location"] == "/session/"
    assert client.session["item"] == value
    assert type(client.session["item"]) is type(value)
    page = client.get("/session/")
    assert ("item", json.dumps(value, ensure_ascii=False)) in page.context["items"]


def test_page_lists_own_keys_but_not_internal_ones(client, alice):
    client.force_login(alice)
    set_key(client, "username", "john_doe")
    page = client.get("/session/")
    assert page.context["items"] == [("username", '"john_doe"')]
    assert b"_auth_user_id" not in page.content


def test_invalid_json_gets_a_form_error_and_changes_nothing(client):
    set_key(client, "kept", 1)
    response = client.post("/session/set/", {"key": "kept", "value": "{not json"})
    assert response.status_code == 400
    assert "Not valid JSON" in response.content.decode()
    assert client.session["kept"] == 1


def test_reserved_keys_are_refused(client, alice):
    client.force_login(alice)
    response = client.post("/session/set/", {"key": "_auth_user_id", "value": "1"})
    assert response.status_code == 400
    assert "reserved" in response.content.decode()
    assert client.get("/").context["user"] == alice


def test_delete_removes_one_key(client):
    set_key(client, "a", 1)
    set_key(client, "b", 2)
    response = client.post("/session/delete/", {"key": "a"})
    assert response.status_code == 302
    assert "a" not in client.session
    assert client.session["b"] == 2


def test_delete_of_a_missing_key_is_a_clear_error(client):
    set_key(client, "b", 2)
    response = client.post("/session/delete/", {"key": "missing"})
    assert response.status_code == 400
    assert "no such key" in response.content.decode()
    assert client.session["b"] == 2


def test_clear_flushes_everything_and_ends_the_login(client, alice):
    client.force_login(alice)
    set_key(client, "a", 1)
    old_key = client.session.session_key
    response = client.post("/session/clear/")
    assert response.status_code == 302
    assert "a" not in client.session
    assert client.session.session_key != old_key
    assert not client.get("/").context["user"].is_authenticated


def test_expiry_3600(client):
    set_key(client, "a", 1)
    assert client.post("/session/expiry/", {"seconds": "3600"}).status_code == 302
    assert client.session.get_expiry_age() == 3600
    assert not client.session.get_expire_at_browser_close()
    assert "Expires at" in client.get("/session/").content.decode()


def test_expiry_0_ends_with_the_browser(client):
    set_key(client, "a", 1)
    assert client.post("/session/expiry/", {"seconds": "0"}).status_code == 302
    assert client.session.get_expire_at_browser_close()
    assert "Expires when the browser closes." in client.get("/session/").content.decode()


@pytest.mark.parametrize("seconds", ["-1", "soon", "", "1.5"])
def test_bad_expiry_is_refused(client, seconds):
    set_key(client, "a", 1)
    client.post("/session/expiry/", {"seconds": "3600"})
    response = client.post("/session/expiry/", {"seconds": seconds})
    assert response.status_code == 400
    assert client.session.get_expiry_age() == 3600


@pytest.mark.parametrize("path", ENDPOINTS)
def test_endpoints_are_post_only(client, path):
    assert client.get(path).status_code == 405


@pytest.mark.parametrize("path", ENDPOINTS)
def test_endpoints_require_csrf(path):
    client = Client(enforce_csrf_checks=True)
    assert client.post(path, {"key": "a", "value": "1", "seconds": "1"}).status_code == 403
