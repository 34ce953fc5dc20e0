"""Channels' `AuthMiddlewareStack`, with the login check in the same database trip, and the whole
way to the consumer in one coroutine (`StatusSocketStack`).

`AuthMiddleware` resolves the user once, at connect, in one `database_sync_to_async` call. The
status consumer also needs the user's `Login` row; a second call would cost a second trip through
Channels' single database thread (and, without pooling, a second database connection) on every
connect. This subclass makes both lookups in the first trip and leaves the row in
`scope["live_login"]`. When the login has ended (or the session names none), the socket is
anonymous: `scope["user"]` is `AnonymousUser` and `scope["live_login"]` is None, as for requests.

When the session was authenticated by `accounts.backends.LoginModelBackend` (Django's
`ModelBackend`, the project's backend), user and login come from one joined query that reads only
the user's fields needed here (`accounts.backends.read_login_with_user`), and Channels' `get_user`
decides with that user, as requests do with Django's: the backend's `user_can_authenticate`, the
session's auth hash, the flush on a mismatch. A profile of connects had put 40% of a handshake in
two queries, a third of that in turning timestamps into `datetime`s. Any other backend goes
through Channels' `get_user` and a second query.

The lookups run on a few threads of their own (`CONNECT_THREADS`), not on Channels' single
database thread: most of a lookup is waiting for the session store and the database, and on one
thread every connecting tab waited for all the others' round trips in turn. They run in batches
(`_ConnectBatches`): the sockets that connect in the same turn of the event loop, or while every
connect thread is busy, are resolved together in one trip to a thread, their sessions read in one
round trip to the session store (`load_many` of the project's session engines) and their logins
in one query. A lone socket waits one turn of the loop longer than before, and no batch waits
for another to fill; under load, each handshake costs a third less of the server's core
(docs/performance.md, "Connect lookups in batches").

When the database or the session store cannot be reached, or the lookup takes longer than
`CONNECT_LOOKUP_TIMEOUT`, the failure is logged and the scope is marked `live_unavailable`: the
consumer refuses the socket cleanly (1013, try again later) instead of failing the handshake with
a server error or leaving it to Daphne's handshake timeout. A batch's shared reads come first:
when they fail, every socket of the batch is refused at once, rather than each waiting out the
same outage in turn; a failure in one socket's own part (its user, its session's hash) refuses
that one alone.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import ParseResult, urlparse

from channels.auth import AuthMiddleware, get_user
from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.conf import settings
from django.contrib.auth import (
    get_user_model,
)
from django.contrib.auth.models import AnonymousUser
from django.db import close_old_connections
from django.http import parse_cookie

from accounts import backends, logins
from realtime.groups import LOGIN_ID_SESSION_KEY

logger = logging.getLogger(__name__)

# Threads that resolve connecting sockets; each holds a database connection while it works (with
# PostgreSQL, one from the pool in settings: keep this below its `max_size`).
CONNECT_THREADS = 4
# The most sockets one trip to a connect thread resolves.
CONNECT_BATCH = 32
# Seconds a connecting socket waits for its lookup before it is refused with 1013: under
# Daphne's handshake timeout (5 s, `--websocket_connect_timeout`), which would drop the socket
# without a word; the database pool alone waits up to 10 s for a connection in an outage.
CONNECT_LOOKUP_TIMEOUT = 4.0
_connect_executor = ThreadPoolExecutor(CONNECT_THREADS, thread_name_prefix="live-connect")


class _ConnectBatches:
    """`await batches(scope)`: `func(scope)` on a connect thread, or `func_many(scopes)` for a
    batch of it and the other scopes waiting (see the module's docstring); `func` stays callable
    as `batches.func`. `func_many` returns one result per scope, in order; an exception in that
    list is raised to that scope's caller alone, one raised by `func_many` to the whole batch.

    Scopes queue per event loop. A flush is scheduled for the end of the loop's current turn; it
    sends the queue to the threads in batches of up to `CONNECT_BATCH`, as long as fewer than
    `CONNECT_THREADS` batches are out, and each batch that comes back flushes what queued
    meanwhile. On the thread, as Channels' `database_sync_to_async` does for each call, old
    database connections are closed before and after the batch. A socket that went away while
    it waited (its task cancelled) is left out."""

    def __init__(self, func, func_many) -> None:
        self.func, self.func_many = func, func_many
        self._queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def __call__(self, scope):
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        future = loop.create_future()
        queue.waiting.append((scope, future))
        if not queue.flush_scheduled:
            queue.flush_scheduled = True
            loop.call_soon(self._flush, loop, queue)
        return await future

    def _flush(self, loop, queue: _LoopQueue) -> None:
        queue.flush_scheduled = False
        while queue.waiting and queue.out < CONNECT_THREADS:
            batch = []
            while queue.waiting and len(batch) < CONNECT_BATCH:
                scope, future = queue.waiting.popleft()
                if not future.done():
                    batch.append((scope, future))
            if not batch:
                continue
            try:
                done = loop.run_in_executor(
                    _connect_executor, self._run, [scope for scope, _ in batch]
                )
            except RuntimeError as error:  # the threads have shut down (the process is exiting)
                for _, future in batch:
                    future.set_exception(error)
                continue
            queue.out += 1
            done.add_done_callback(functools.partial(self._deliver, loop, queue, batch))

    def _run(self, scopes: list) -> list:
        """On a connect thread: each scope's result (see the class's docstring)."""
        close_old_connections()
        try:
            return self.func_many(scopes) if len(scopes) > 1 else [self.func(scopes[0])]
        finally:
            close_old_connections()

    def _deliver(self, loop, queue: _LoopQueue, batch: list, done: asyncio.Future) -> None:
        """On the loop, as a batch comes back (asyncio brings it over from the thread, and
        drops it if the loop has closed meanwhile)."""
        queue.out -= 1
        error = done.exception()
        results = [error] * len(batch) if error is not None else done.result()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # cancelled while its batch ran
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._flush(loop, queue)


class _LoopQueue:
    def __init__(self) -> None:
        self.waiting: collections.deque = collections.deque()
        self.flush_scheduled = False
        self.out = 0  # batches on the threads


def _resolve_scope(scope, read=None):
    """(user, login) of one socket; `read`: its login as `read_login_with_user` returns it, when
    read already."""
    session = scope["session"]
    read, login = read or backends.read_login_with_user(session, _user_fields())
    with backends.user_already_read(login.user if login is not None else None):
        user = get_user.func(scope)  # Channels' own, undecorated: on a database thread already
    if not user.is_authenticated:
        return AnonymousUser(), None
    if not read:  # a backend other than LoginModelBackend: the login in a query of its own
        login = logins.active_login(session.get(LOGIN_ID_SESSION_KEY), user.pk)
    return (user, login) if login is not None else (AnonymousUser(), None)


def _resolve_scopes(scopes: list) -> list:
    """`_resolve_scope` for each of a batch: the sessions in one read of the store (where the
    engine has `load_many`), the logins in one query; those shared reads failing fail the batch,
    one socket's own part failing gives its exception in its place."""
    sessions = [scope["session"] for scope in scopes]
    engine = type(sessions[0])
    if hasattr(engine, "load_many") and all(type(session) is engine for session in sessions):
        engine.load_many(sessions)
    reads = backends.read_logins_with_users(sessions, _user_fields())
    results = []
    for scope, read in zip(scopes, reads, strict=True):
        try:
            results.append(_resolve_scope(scope, read))
        except Exception as error:
            results.append(error)
    return results


_resolve = _ConnectBatches(_resolve_scope, _resolve_scopes)


@functools.cache
def _user_fields() -> tuple[str, ...]:
    """The user's fields a socket needs: its key, name, password (for the session hash) and
    whether it is active."""
    user_model = get_user_model()
    names = {field.name for field in user_model._meta.concrete_fields}
    wanted = [user_model._meta.pk.name, user_model.USERNAME_FIELD, "password", "is_active"]
    return tuple(name for name in wanted if name in names)


class LiveAuthMiddleware(AuthMiddleware):
    async def resolve_scope(self, scope) -> None:
        try:
            async with asyncio.timeout(CONNECT_LOOKUP_TIMEOUT):  # no task of its own, as `wait_for`
                found = await _resolve(scope)
        except TimeoutError:
            logger.warning("a socket's lookup took over %s s; refused", CONNECT_LOOKUP_TIMEOUT)
        except Exception:
            logger.exception("could not resolve the user of a socket")
        else:
            scope["user"]._wrapped, scope["live_login"] = found
            return
        scope["user"]._wrapped, scope["live_login"] = AnonymousUser(), None
        scope["live_unavailable"] = True


class StatusSocketStack:
    """What a WebSocket passes through on its way to the consumer: Channels'
    `AllowedHostsOriginValidator`, `URLRouter` with one route, and `AuthMiddlewareStack` (with
    `LiveAuthMiddleware`), in one coroutine and one copy of the scope.

    Composed from Channels' classes, each of those is a coroutine that waits for the next one as
    long as the socket is open, and most keep a copy of the scope: eleven coroutines and six
    scopes per idle socket (a census of a Daphne process's objects), and every message the socket
    sent went through the session middleware's `send`, which saves sessions for HTTP responses
    only. Here the same steps run in one frame, in Channels' order, with Channels' own pieces
    where they exist:

    - the origin, with Channels' validator for the allowed hosts (the last `Origin` header, as
      Channels reads it); a foreign origin is refused (403);
    - the path (after the server's `root_path`); an unknown path is refused the same way, before
      any lookup (Channels' router raised, a server error);
    - the cookies, parsed by Django's `parse_cookie` from the first `Cookie` header;
    - the session store for the session cookie, in `scope["session"]` (the store itself, not
      Channels' lazy proxy to it);
    - the user and login, by `LiveAuthMiddleware`.

    The consumer's scope has no `url_route` (its one route has no arguments)."""

    def __init__(self, consumer_class, path: str) -> None:
        self.consumer_class = consumer_class
        self.path = path.lstrip("/")
        self.origins = AllowedHostsOriginValidator(None)
        self.auth = LiveAuthMiddleware(None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("StatusSocketStack serves WebSocket connections only")
        if not (self._routed(scope) and self.origins.valid_origin(_origin(scope))):
            return await WebsocketDenier()(scope, receive, send)
        scope = dict(scope, cookies=_cookies(scope))
        if "session" not in scope:
            session_key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
            scope["session"] = logins.session_store_class()(session_key)
        self.auth.populate_scope(scope)
        await self.auth.resolve_scope(scope)
        return await self.consumer_class()(scope, receive, send)

    def _routed(self, scope) -> bool:
        path, root_path = scope["path"], scope.get("root_path", "")
        if root_path and not path.startswith(root_path):
            return False
        return path[len(root_path) :].lstrip("/") == self.path


def _origin(scope) -> ParseResult | None:
    origin = None
    for name, value in scope.get("headers", []):
        if name == b"origin":
            try:
                origin = urlparse(value.decode("latin1"))
            except UnicodeDecodeError:
                pass
    return origin


def _cookies(scope) -> dict[str, str]:
    for name, value in scope["headers"]:
        if name == b"cookie":
            return parse_cookie(value.decode("latin1"))
    return {}
