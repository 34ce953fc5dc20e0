"""Per-process re-checks of the logins that have sockets here.

The channel layer is a fast path; the `Login` table and the session store are the truth. One
watcher per event loop wakes at the earliest expiry among its logins and at least every
`LIVE_RECHECK_SECONDS`, reads the store fresh in one batch, ends what has expired or lost its
session, and delivers every ending it finds to its own sockets directly, without the channel
layer: a logout lost by Redis (down, flushed, a full channel, a group past `group_expiry`) still
arrives within the interval. Endings made in this process are delivered the same way at once
(`tell_ended`, from `broadcast.alogins_ended`). Consumers ignore a second logout. Told sockets
are closed together once the logouts of the moment are out (`close_after_logouts`).

The watcher also knows every open socket of its loop, so their channel-layer group memberships
can be renewed: after Redis comes back from an outage (a restarted or flushed Redis has lost
them), and every half `group_expiry` (channels-redis drops members older than that).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts import logins
from accounts.models import Login
from realtime import broadcast
from realtime.groups import (
    EVENT_LOGOUT,
    REASON_EXPIRED,
    REASON_LOGOUT,
    REASON_REPLACED,
    REASON_SESSION_ENDED,
)
from realtime.layers import REDIS_DOWN
from realtime.memory import Trimmer, at_trim, compacted

logger = logging.getLogger(__name__)

TABS_NOTICE_DELAY = 0.25  # seconds; the sessions page's tab counts lag by at most this
# Sockets told that their login ended are closed once no other socket here has been told for
# CLOSE_QUIET seconds, and at most CLOSE_WAIT_MAX seconds after the first of them was told.
CLOSE_QUIET = 0.05
CLOSE_WAIT_MAX = 1.0
REJOIN_BATCH = 100  # sockets renewing their groups at once
REJOIN_ATTEMPTS = 5

_watchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def watcher() -> LoginWatcher:
    """The watcher of the running event loop."""
    loop = asyncio.get_running_loop()
    if loop not in _watchers:
        _watchers[loop] = LoginWatcher(interval=settings.LIVE_RECHECK_SECONDS)
    return _watchers[loop]


def existing_watcher() -> LoginWatcher | None:
    """The watcher of the running event loop, if a socket has made one."""
    return _watchers.get(asyncio.get_running_loop())


@at_trim
def _compact() -> None:
    """After a wave of sockets, the running loop's watcher rebuilds its tables for the sockets
    and logins left (each kept a table sized for every one of the wave), each login's set of
    sockets among them."""
    found = existing_watcher()
    if found is not None:
        found.open, found.expires = compacted(found.open), compacted(found.expires)
        found.sockets = {login: compacted(tabs) for login, tabs in found.sockets.items()}


class LoginWatcher:
    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self.sockets: dict[str, set] = {}  # login id -> its consumers (StatusConsumer) here
        self.expires: dict[str, float] = {}  # login id -> expiry, epoch seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._tab_notices: set[int] = set()  # users with a tabs notice pending
        self._background: set[asyncio.Task] = set()
        self.open: set = set()  # every socket of this loop, logged in or not
        self.trimmer = Trimmer()
        self._renewal: asyncio.Task | None = None
        self._to_close: list = []  # sockets told their login ended, not yet closed
        self._first_told = self._last_told = 0.0  # loop times

    def opened(self, consumer) -> None:
        """Runs when any socket is accepted: its groups will be renewed when they may be lost."""
        self.open.add(consumer)
        self.trimmer.socket_opened(len(self.open))
        if self._renewal is None or self._renewal.done():
            layer = consumer.channel_layer
            if hasattr(layer, "recovery_callbacks"):  # the Redis layer (realtime.layers)
                layer.recovery_callbacks.add(self.rejoin_all)
            self._renewal = asyncio.create_task(self._renew(layer))

    def closed(self, consumer) -> None:
        if consumer in self.open:
            self.open.discard(consumer)
            self.trimmer.socket_closed(len(self.open))

    async def rejoin_all(self) -> None:
        """Every open socket adds itself to its groups again (adding twice is harmless). Right
        after Redis restarts, pooled connections fail once each: those sockets try again."""
        pending = list(self.open)
        for attempt in range(REJOIN_ATTEMPTS):
            failed = []
            for start in range(0, len(pending), REJOIN_BATCH):
                batch = pending[start : start + REJOIN_BATCH]
                results = await asyncio.gather(*(c.rejoin() for c in batch), return_exceptions=True)
                failed += [
                    c for c, r in zip(batch, results, strict=True) if isinstance(r, Exception)
                ]
            if not failed:
                return
            pending = failed
            await asyncio.sleep(0.2 * (attempt + 1))
        logger.warning("%d sockets could not rejoin their groups", len(pending))

    async def _renew(self, layer) -> None:
        """While sockets are open: rejoin every half `group_expiry`, and at once when Redis has
        lost its data (restarted or flushed), checked every `LIVE_RECHECK_SECONDS`."""
        expiry = getattr(layer, "group_expiry", None)
        if not expiry or not hasattr(layer, "redis_was_reset"):
            # The in-memory layer: no Redis to lose the groups. (Its members older than
            # group_expiry, a day, are dropped and not renewed: one process, left as it is.)
            return
        every = min(self.interval, expiry / 2)
        renewed = time.monotonic()
        while self.open:
            try:
                reset = await layer.redis_was_reset()
            except REDIS_DOWN:
                reset = False  # the layer's own probe rejoins when Redis answers again
            if reset or time.monotonic() - renewed >= expiry / 2 - every:
                if reset:
                    logger.warning("Redis lost its groups (restarted or flushed); rejoining")
                await self.rejoin_all()
                renewed = time.monotonic()
            await asyncio.sleep(every)

    def add(self, login_id: str, consumer, expires_at: float) -> None:
        """Runs when a socket of this login connects (or switches to it)."""
        self.sockets.setdefault(login_id, set()).add(consumer)
        self.set_expiry(login_id, expires_at)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def discard(self, login_id: str, consumer) -> None:
        """Runs when a socket closes or leaves the login."""
        consumers = self.sockets.get(login_id)
        if consumers is None:
            return
        consumers.discard(consumer)
        if not consumers:
            del self.sockets[login_id]
            self.expires.pop(login_id, None)

    def tabs_changed(self, user_id: int) -> None:
        """Runs when a socket of the user's joins or leaves a login: one notice per user per
        `TABS_NOTICE_DELAY`, however many tabs come and go meanwhile, and the notices of every
        user pending then in one go (one round trip to Redis, not two per user: while tabs
        connect, a notice per user had taken a twentieth of the event loop, py-spy)."""
        if not self._tab_notices:
            asyncio.get_running_loop().call_later(TABS_NOTICE_DELAY, self._notify_tabs)
        self._tab_notices.add(user_id)

    def _notify_tabs(self) -> None:
        user_ids, self._tab_notices = self._tab_notices, set()
        self._in_background(broadcast.asessions_changed(user_ids=user_ids))

    def close_after_logouts(self, consumer) -> None:
        """Runs when a socket has been sent its `logout`: close it with 4001 once the logouts of
        the moment have all gone out (`CLOSE_QUIET`, `CLOSE_WAIT_MAX`).

        A socket's close costs the event loop several times its message (the close frame, the
        client's reply, the TCP close, the disconnect). Closed at once, the first sockets of a
        storm of logouts held back the news to all the others (docs/performance.md)."""
        self._last_told = asyncio.get_running_loop().time()
        self._to_close.append(consumer)
        if len(self._to_close) == 1:
            self._first_told = self._last_told
            self._close_told()

    def _close_told(self) -> None:
        loop = asyncio.get_running_loop()
        due = min(self._last_told + CLOSE_QUIET, self._first_told + CLOSE_WAIT_MAX)
        if due > loop.time() + 0.001:
            loop.call_at(due, self._close_told)
            return
        told, self._to_close = self._to_close, []
        self._in_background(_close_logged_out(told))

    def _in_background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def set_expiry(self, login_id: str, expires_at: float) -> None:
        """Runs when the login's expiry is known or moved."""
        previous = self.expires.get(login_id)
        self.expires[login_id] = expires_at
        if previous is None or expires_at < previous:
            self._wake.set()

    async def _run(self) -> None:
        next_full = time.time() + self.interval
        while self.sockets:
            now = time.time()
            due = min([next_full, *self.expires.values()])
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, due - now) + 0.05)
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.time()
            full = now >= next_full
            ids = list(self.sockets) if full else [i for i, t in self.expires.items() if t <= now]
            if full:
                next_full = now + self.interval
            if ids:
                try:
                    await self._check(ids, check_sessions=full)
                except Exception:  # a broken database must not kill the watcher
                    logger.exception("login re-check failed; retrying")
                    await asyncio.sleep(1)

    async def _check(self, ids: list[str], *, check_sessions: bool) -> None:
        verdicts = await _inspect(ids, check_sessions=check_sessions)
        for login_id, (reason, expires_at) in verdicts.items():
            if reason is None:
                if login_id in self.expires:
                    self.expires[login_id] = expires_at
                continue
            await self.tell_ended([login_id], reason)

    async def tell_ended(self, login_ids: list[str], reason: str) -> None:
        """Send a logout to this loop's sockets of these logins, directly. The watcher's own
        re-checks end logins this way, and so does every ending made in this process
        (`broadcast.alogins_ended`), before the channel layer carries it to the other
        processes' sockets (and to these again, which ignore a second logout)."""
        event = {"type": EVENT_LOGOUT, "reason": reason}
        for login_id in login_ids:
            for consumer in list(self.sockets.pop(login_id, ())):
                try:
                    await consumer.live_logout(event)
                except Exception:  # a socket that is already gone
                    logger.debug("could not deliver a logout to %s", consumer, exc_info=True)
            self.expires.pop(login_id, None)


async def _close_logged_out(consumers: list) -> None:
    for consumer in consumers:
        try:
            await consumer.close_logged_out()
        except Exception:  # one socket's failure must not keep the others open
            logger.warning("could not close a logged-out socket", exc_info=True)


@database_sync_to_async
def _inspect(ids: list[str], *, check_sessions: bool) -> dict[str, tuple[str | None, float]]:
    """For each login: (None, expiry) while active, else (reason it ended, 0)."""
    now = timezone.now()
    rows = {row.id: row for row in Login.objects.filter(id__in=ids)}
    store = logins.session_store_class()
    verdicts: dict[str, tuple[str | None, float]] = {}
    for login_id in ids:
        row = rows.get(login_id)
        if row is None:
            verdicts[login_id] = (REASON_SESSION_ENDED, 0)
        elif row.ended_at is not None:
            reason = REASON_LOGOUT if row.end_reason == REASON_REPLACED else row.end_reason
            verdicts[login_id] = (reason, 0)
        elif row.expires_at <= now:
            logins.end_logins(Login.objects.filter(id=login_id), REASON_EXPIRED)
            verdicts[login_id] = (REASON_EXPIRED, 0)
        elif check_sessions and row.session_key and not store().exists(row.session_key):
            logins.end_logins(Login.objects.filter(id=login_id), REASON_SESSION_ENDED)
            verdicts[login_id] = (REASON_SESSION_ENDED, 0)
        else:
            verdicts[login_id] = (None, row.expires_at.timestamp())
    return verdicts
