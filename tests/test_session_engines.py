"""The project's `db` and `cached_db` session engines (accounts/session_engines): Django's, with a
`delete` that is one `DELETE`. The rest of the suite runs on the `db` one, as the settings pick."""

from __future__ import annotations

from contextlib import contextmanager
from importlib import import_module

import pytest
from django.core.cache import caches
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from accounts.models import Login

pytestmark = pytest.mark.django_db(transaction=True)

ENGINES = ["accounts.session_engines.db", "accounts.session_engines.cached_db"]
TABLE = '"django_session"'


def _statements_on_the_table(queries) -> list[str]:
    return [q["sql"].split(" ")[0] for q in queries if TABLE in q["sql"]]


@contextmanager
def _deletes_in_a_transaction():
    """For each `DELETE` on the table meanwhile: was a transaction (`atomic`) open around it? A
    `BEGIN` and `COMMIT` are not among the captured queries on PostgreSQL."""
    seen: list[bool] = []

    def note(execute, sql, params, many, context):
        if sql.startswith("DELETE") and TABLE in sql:
            seen.append(connection.in_atomic_block)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(note):
        yield seen


def _cached(store, key: str, settings):
    return caches[settings.SESSION_CACHE_ALIAS].get(store.cache_key_prefix + key)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_logout_deletes_the_session_in_one_statement(alice, settings, engine):
    settings.SESSION_ENGINE = engine
    store = import_module(engine).SessionStore
    client = Client()
    client.force_login(alice)
    key = client.session.session_key
    assert store().exists(key)

    with CaptureQueriesContext(connection) as queries:
        assert client.post("/accounts/logout/").status_code == 302

    # The request reads its session first (from the cache under cached_db). Then Django's
    # engines read the row again before deleting it: ["SELECT", "SELECT", "DELETE"] under db.
    loaded = [] if engine.endswith("cached_db") else ["SELECT"]
    assert _statements_on_the_table(queries) == [*loaded, "DELETE"]
    assert not store().exists(key)
    if engine.endswith("cached_db"):
        assert _cached(store, key, settings) is None
    assert client.get("/accounts/sessions/").status_code == 302  # logged out for good


@pytest.mark.parametrize("engine", ENGINES)
def test_deleting_leaves_other_sessions_and_ignores_missing_ones(alice, bob, settings, engine):
    settings.SESSION_ENGINE = engine
    store = import_module(engine).SessionStore
    kept, gone = Client(), Client()
    kept.force_login(bob)
    gone.force_login(alice)
    kept_key, gone_key = kept.session.session_key, gone.session.session_key

    store(gone_key).delete()
    store(gone_key).delete()  # already gone: nothing to do, no error
    store().delete()  # no key at all
    store().delete("no-such-session-key")

    assert not store().exists(gone_key)
    assert store().exists(kept_key)
    assert store(kept_key).load()  # its data is intact


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_async_delete(alice, settings, engine):
    settings.SESSION_ENGINE = engine
    store = import_module(engine).SessionStore
    client = AsyncClient()
    await client.aforce_login(alice)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert await store().aexists(key)

    await store(key).adelete()
    await store(key).adelete()  # already gone

    assert not await store().aexists(key)
    if engine.endswith("cached_db"):
        assert await caches[settings.SESSION_CACHE_ALIAS].aget(store.cache_key_prefix + key) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_logout_everywhere_deletes_them_together(alice, settings, engine):
    settings.SESSION_ENGINE = engine
    store = import_module(engine).SessionStore
    browsers = [Client() for _ in range(3)]
    for client in browsers:
        client.force_login(alice)
    keys = [client.session.session_key for client in browsers]

    with CaptureQueriesContext(connection) as queries:
        assert browsers[0].post("/accounts/logout/everywhere/").status_code == 302

    assert [store().exists(key) for key in keys] == [False, False, False]
    # One DELETE for all of them, then the logout's own flush: a DELETE that finds the row gone
    # (Django's engines make a SELECT there instead).
    loaded = [] if engine.endswith("cached_db") else ["SELECT"]
    assert _statements_on_the_table(queries) == [*loaded, "DELETE", "DELETE"]


@pytest.mark.parametrize("engine", ENGINES)
def test_the_deletes_open_no_transaction(alice, settings, engine):
    """Django's `QuerySet.delete` puts even a one-table delete in a transaction: a `BEGIN` and a
    `COMMIT` more, two round trips on every logout."""
    settings.SESSION_ENGINE = engine
    browsers = [Client() for _ in range(3)]
    for client in browsers:
        client.force_login(alice)

    with _deletes_in_a_transaction() as logout:
        assert browsers[2].post("/accounts/logout/").status_code == 302
    with _deletes_in_a_transaction() as everywhere:
        assert browsers[0].post("/accounts/logout/everywhere/").status_code == 302

    assert logout == [False]
    assert everywhere == [False, False]  # the other sessions together, then the logout's flush


@pytest.mark.parametrize("engine", ENGINES)
def test_a_cycled_key_moves_its_login_before_the_old_key_goes(alice, settings, engine):
    """A password change cycles the session key; a login watcher checking in between must find
    the login's session, under its old key or its new one, never neither."""
    settings.SESSION_ENGINE = engine
    store = import_module(engine).SessionStore
    client = Client()
    client.post("/accounts/login/", {"username": "alice", "password": "alice-pass-1234"})
    old_key = client.cookies["sessionid"].value
    login = Login.objects.get(session_key=old_key)
    named_when_deleted = []
    real_delete = store.delete

    def delete(self, session_key=None):
        named_when_deleted.append(Login.objects.get(id=login.id).session_key)
        real_delete(self, session_key)

    session = store(old_key)
    session.load()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "delete", delete)
        session.cycle_key()
    assert named_when_deleted == [session.session_key] != [old_key]
    assert store().exists(session.session_key) and not store().exists(old_key)
    assert Login.objects.get(id=login.id).session_key == session.session_key
