"""The life of a login: started at `login()`, checked on every request and socket, ended once.

Every way a login ends goes through `end_logins`: it marks the `Login` rows ended (the first caller
wins), deletes their server-side sessions, and after the transaction commits tells their sockets
why. Requests and sockets that carry an ended login's cookie are treated as anonymous.
"""

from __future__ import annotations

import functools
from importlib import import_module

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends import cache as cache_engine
from django.contrib.sessions.backends import cached_db as cached_db_engine
from django.contrib.sessions.backends import db as db_engine
from django.core.cache import caches
from django.db import connections, router, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Login
from accounts.session_engines import db as project_db_engine
from realtime import broadcast
from realtime.groups import LOGIN_ID_SESSION_KEY, REASON_REPLACED, is_valid_id, new_id

_SIGNED_COOKIES = "django.contrib.sessions.backends.signed_cookies"


def session_store_class():
    return import_module(settings.SESSION_ENGINE).SessionStore


def server_side_key(session) -> str:
    """The session's key in a server-side store; "" under signed_cookies (nothing to look up)."""
    if settings.SESSION_ENGINE == _SIGNED_COOKIES:
        return ""
    return session.session_key or ""


def client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def start_login(request, user) -> Login:
    """Record a new login and put its identifier in the session (runs inside `login()`)."""
    previous = getattr(request, "live_previous_login_id", None)
    login = Login.objects.create(
        id=new_id(),
        user=user,
        session_key=server_side_key(request.session),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
        ip_address=client_ip(request),
        expires_at=request.session.get_expiry_date(),
    )
    request.session[LOGIN_ID_SESSION_KEY] = login.id
    if previous and previous != login.id:
        # login() as someone else flushed the old session without a logout; its sockets are in
        # this browser and move to the new login, so the old one ends without a message.
        end_logins(Login.objects.filter(id=previous), REASON_REPLACED, notify=False)
    return login


def _active(login_id: object, user_id: object) -> QuerySet[Login]:
    """The login, if it is still active and unexpired (an empty query for an invalid id)."""
    if not is_valid_id(login_id):
        return Login.objects.none()
    return Login.objects.filter(
        id=login_id, user_id=user_id, ended_at__isnull=True, expires_at__gt=timezone.now()
    )


_CHECKED_FIELDS = ("id", "user_id", "session_key", "expires_at", "last_active")


def active_login(login_id: object, user_id: object) -> Login | None:
    """The login if it is still active and unexpired; a fresh read of the database."""
    return _first(_active(login_id, user_id).only(*_CHECKED_FIELDS))


# A connect's fields of its login: one timestamp, not three.
_CONNECT_LOGIN_FIELDS = ("id", "user_id", "expires_at")


def active_login_with_user(
    login_id: object, user_id: object, user_fields: tuple[str, ...] | None = None
) -> Login | None:
    """`active_login`, with the login's user in the same query: for a connect, `user_fields` of
    it; for a request, all of it (views may read any field of `request.user`; accounts/backends.py).

    The SQL is written once per database and field lists (`_JoinedQuery`): the ORM built and
    compiled that query again for every call, 1.1 ms per connect in one process on PostgreSQL
    against 0.3 ms from a cursor (docs/performance.md)."""
    if not is_valid_id(login_id):
        return None
    if user_fields is None:  # a request's check: the fields `_sync_login` reads, the whole user
        login_fields, user_fields = _CHECKED_FIELDS, _all_user_fields()
    else:  # a connect
        login_fields = _CONNECT_LOGIN_FIELDS
    query = _JoinedQuery.get(router.db_for_read(Login), login_fields, user_fields)
    return query.run(login_id, user_id)


def active_logins_with_users(
    wanted: list[tuple[object, object]], user_fields: tuple[str, ...]
) -> list[Login | None]:
    """`active_login_with_user` for each (login id, user id) of a batch of connecting sockets,
    in one query: each its own objects, None where that login is not active or not that user's."""
    ids = sorted({login_id for login_id, _ in wanted if is_valid_id(login_id)})
    if not ids:
        return [None] * len(wanted)
    query = _JoinedQuery.get(router.db_for_read(Login), _CONNECT_LOGIN_FIELDS, user_fields)
    return query.run_many(ids, wanted)


@functools.cache
def _all_user_fields() -> tuple[str, ...]:
    return tuple(field.name for field in get_user_model()._meta.concrete_fields)


class _JoinedQuery:
    """One login and its user from one `SELECT`, with the values converted from the database as
    the ORM converts them (each column's converters: the backend's, then the field's
    `from_db_value`) and the models made with `from_db`."""

    @classmethod
    @functools.cache
    def get(cls, alias: str, login_fields: tuple, user_fields: tuple) -> _JoinedQuery:
        return cls(alias, login_fields, user_fields)

    def __init__(self, alias: str, login_fields: tuple, user_fields: tuple) -> None:
        self.alias = alias
        connection = connections[alias]
        self.user_model = get_user_model()
        login_meta, user_meta = Login._meta, self.user_model._meta
        # In each model's field order: `from_db` takes its values in that order.
        self.login_fields = _in_model_order(login_meta, login_fields)
        self.user_fields = _in_model_order(user_meta, user_fields)
        quote = connection.ops.quote_name

        def column(field) -> str:
            return f"{quote(field.model._meta.db_table)}.{quote(field.column)}"

        self.login_names = [field.attname for field in self.login_fields]
        self.user_names = [field.attname for field in self.user_fields]
        self.expires_at = login_meta.get_field("expires_at")
        self.converters = []
        for field in self.login_fields + self.user_fields:
            col = field.get_col(field.model._meta.db_table)
            self.converters.append(
                (col, connection.ops.get_db_converters(col) + col.get_db_converters(connection))
            )
        login = {name: column(login_meta.get_field(name)) for name in ("id", "user", "ended_at")}
        expires_at = column(login_meta.get_field("expires_at"))
        select = (
            f"SELECT {', '.join(column(f) for f in self.login_fields + self.user_fields)}"
            f" FROM {quote(login_meta.db_table)} INNER JOIN {quote(user_meta.db_table)}"
            f" ON ({login['user']} = {column(user_meta.pk)})"
        )
        active = f"{login['ended_at']} IS NULL AND {expires_at} > %s"
        self.sql = (
            f"{select} WHERE {login['id']} = %s AND {login['user']} = %s AND {active} LIMIT 1"
        )
        # `run_many`: the logins of many ids, by how many (each count its own statement).
        self.sql_many = functools.cache(
            lambda count: (
                f"{select} WHERE {login['id']} IN ({', '.join(['%s'] * count)}) AND {active}"
            )
        )

    def run(self, login_id: str, user_id: object) -> Login | None:
        connection = connections[self.alias]
        params = [
            login_id,
            self.user_model._meta.pk.get_db_prep_value(user_id, connection),
            self.expires_at.get_db_prep_value(timezone.now(), connection),
        ]
        with connection.cursor() as cursor:
            cursor.execute(self.sql, params)
            row = cursor.fetchone()
        return None if row is None else self._login(self._converted(row, connection))

    def run_many(self, ids: list[str], wanted: list[tuple[object, object]]) -> list[Login | None]:
        """For each (login id, user id) in `wanted`, its active login with its user, or None;
        `ids` are the valid login ids among them, each once. The login's fields must include
        `user_id`: a row counts only for the user asked for, as `run`'s `WHERE` does."""
        connection = connections[self.alias]
        now = self.expires_at.get_db_prep_value(timezone.now(), connection)
        with connection.cursor() as cursor:
            cursor.execute(self.sql_many(len(ids)), [*ids, now])
            rows = cursor.fetchall()
        id_at, user_id_at = self.login_names.index("id"), self.login_names.index("user_id")
        found = {}
        for row in rows:
            values = self._converted(row, connection)
            found[values[id_at]] = values
        logins = []
        for login_id, user_id in wanted:
            values = found.get(login_id)
            if values is None or values[user_id_at] != user_id:
                logins.append(None)
            else:  # objects of its own for each socket, as from `run`
                logins.append(self._login(values))
        return logins

    def _converted(self, row, connection) -> list:
        values = []
        for value, (col, converters) in zip(row, self.converters, strict=True):
            for convert in converters:
                value = convert(value, col, connection)
            values.append(value)
        return values

    def _login(self, values: list) -> Login:
        split = len(self.login_fields)
        login = Login.from_db(self.alias, self.login_names, values[:split])
        login.user = self.user_model.from_db(self.alias, self.user_names, values[split:])
        return login


def _in_model_order(meta, names: tuple) -> list:
    wanted = {meta.get_field(name) for name in names}
    return [field for field in meta.concrete_fields if field in wanted]


def _first(logins: QuerySet[Login]) -> Login | None:
    """The one row a primary-key query finds, if any: `first()` without its `ORDER BY`, which
    was a fifth of the time Django spent building a connect's query (py-spy)."""
    return next(iter(logins[:1]), None)


def end_logins(
    logins: QuerySet[Login], reason: str, *, notify: bool = True, delete_sessions: bool = True
) -> list[str]:
    """End every still-active login in `logins`; returns the identifiers this call ended.

    `delete_sessions=False` leaves the session stores alone, for a caller about to flush the one
    session concerned (logout).
    """
    rows = list(logins.filter(ended_at__isnull=True).values_list("id", "user_id", "session_key"))
    ended = [login_id for login_id, _, _ in rows]
    # Conditional on still being active, so a concurrent ending neither rewrites the reason nor
    # matters: at worst both broadcast, and sockets ignore a second logout.
    _mark_ended(ended, reason)
    # The tabs first: the rows say these logins have ended, and every request and socket checks
    # them, so the sessions' deletion (a round trip or two each) need not hold the news back.
    if notify and rows:
        _notify_ended(ended, {user_id for _, user_id, _ in rows}, reason)
    if delete_sessions:
        delete_stored_sessions([session_key for _, _, session_key in rows])
    return ended


# Engines whose `delete` removes a row of the session table, or a cache entry, or both: Django's,
# and the project's `db` (accounts/session_engines; its `cached_db` keeps Django's `delete`).
_DELETES_ROW = {
    db_engine.SessionStore.delete,
    cached_db_engine.SessionStore.delete,
    project_db_engine.SessionStore.delete,
}
_DELETES_CACHED = {cache_engine.SessionStore.delete, cached_db_engine.SessionStore.delete}
_BULK = 500  # keys per statement (SQLite's older builds allow 999 parameters)


def delete_stored_sessions(session_keys: list[str]) -> None:
    """Delete these sessions from the session store, all at once where the engine is `db`,
    `cached_db` or `cache` (Django's or the project's): one `DELETE` (with no transaction of its
    own) and one cache `delete_many` per 500 keys.

    Django's own `delete` makes a `SELECT` and a `DELETE` per session, and a cache round trip: 300
    round trips for a logout everywhere of 100 sessions (200 with the project's engines). They ran
    after the tabs were told, but the request took the interpreter's lock at every answer, and the
    tabs heard 0.1-0.2 s later for it (docs/performance.md). Another engine, or a subclass with
    its own `delete`, is asked one session at a time. As Django's `cached_db` does, the row goes
    first: a request in between can then not read the row back into the cache."""
    keys = [key for key in session_keys if key]
    store = session_store_class()
    in_table, in_cache = store.delete in _DELETES_ROW, store.delete in _DELETES_CACHED
    if not (in_table or in_cache):
        for key in keys:
            store(key).delete()
        return
    for start in range(0, len(keys), _BULK):
        chunk = keys[start : start + _BULK]
        if in_table:
            project_db_engine.delete_rows(store.get_model_class(), chunk)
        if in_cache:
            caches[settings.SESSION_CACHE_ALIAS].delete_many(
                [store.cache_key_prefix + key for key in chunk]
            )


def end_checked_login(login: Login, reason: str) -> bool:
    """End the login that this request's middleware has just read (`request.live_login`): one
    conditional `UPDATE`, with no `SELECT` first. Its session is left to the caller (logout()
    flushes it next). A tenth of a logout request went to reading the row a second time."""
    if not _mark_ended([login.id], reason):
        return False
    _notify_ended([login.id], {login.user_id}, reason)
    return True


def _mark_ended(login_ids: list[str], reason: str) -> int:
    """Mark the still-active ones of these logins ended; returns how many this call ended.

    The `UPDATE` is written here, as `QuerySet.update` would write it: the ORM built and compiled
    it again for every logout, 0.26 ms of CPU against 0.08-0.10 ms for running the statement, and
    the tabs are told only after it (docs/performance.md)."""
    if not login_ids:
        return 0
    alias = router.db_for_write(Login)
    connection = connections[alias]
    quote = connection.ops.quote_name
    meta = Login._meta
    ended_at, end_reason = meta.get_field("ended_at"), meta.get_field("end_reason")
    placeholders = ", ".join(["%s"] * len(login_ids))
    sql = (
        f"UPDATE {quote(meta.db_table)}"
        f" SET {quote(ended_at.column)} = %s, {quote(end_reason.column)} = %s"
        f" WHERE {quote(meta.pk.column)} IN ({placeholders}) AND {quote(ended_at.column)} IS NULL"
    )
    params = [
        ended_at.get_db_prep_value(timezone.now(), connection),
        end_reason.get_db_prep_value(reason, connection),
        *login_ids,
    ]
    with transaction.mark_for_rollback_on_error(alias), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _notify_ended(login_ids: list[str], user_ids: set[int], reason: str) -> None:
    """Tell the sockets, once the ending is committed."""
    transaction.on_commit(
        lambda: broadcast.logins_ended(login_ids=login_ids, user_ids=user_ids, reason=reason)
    )


def end_user_logins(user, reason: str, *, keep: str | None = None) -> list[str]:
    """End every active login of `user`, except the one with identifier `keep`."""
    return end_logins(Login.objects.filter(user=user).exclude(id=keep or ""), reason)
