"""Give memory back to the operating system after many sockets close.

Each open socket costs tens of KiB, and without this the process keeps its peak for good: after
1,000 tabs closed, a Daphne process stayed 65% above where it started (tests/test_soak.py). Two
things hold on to it. Python's small-object allocator keeps any 256 KiB arena that still has one
live object, so the server runs with `PYTHONMALLOC=malloc` (Procfile) and every allocation goes
to glibc; and glibc keeps freed memory in its heaps until `malloc_trim` returns it. A few seconds
after most of the sockets have closed, this module runs a full garbage collection (whatever
cycles the wave left, and the survivors of collections while it was open, which nothing else
collects on an idle server) and then `malloc_trim(0)` off the event loop.
Before the collection it lets go of what a wave leaves scattered among the freed sockets: the
names in Python's cache of attribute lookups on types, and the hash tables that held every socket
(`at_trim`). Elsewhere than glibc it does nothing.

It also sets how often Python's cyclic garbage collector runs (`tune_gc`, called by
asgi_project/asgi.py): see `GC_YOUNG_THRESHOLD`; and how many heaps glibc's malloc keeps
(`limit_malloc_arenas`, also called there): see `MALLOC_ARENAS`.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)

TRIM_AFTER_CLOSES = 100  # sockets closed since the last trim
TRIM_DELAY = 5.0  # seconds without a close: the closing wave is over
TRIM_MAX_WAIT = 30.0  # seconds from the first due close: a wave that never pauses still gets one


# Python collects its youngest generation once allocations outrun deallocations by 700 objects.
# Daphne used to ping every socket whose turn had come in one burst (10,000 tabs: about 1,000 pings
# every 2 s), and each burst outran that by far before the pongs freed it: the collector ran 7
# times a second on an idle server, each time moving the pings in flight a generation up, until
# every 30 to 60 s a full collection walked the 1.7 million objects of 10,000 sockets for about
# 1.9 s, blocking the loop. The threshold went to 50,000, which no burst reached. But a young
# collection's pause grows with what it finds: with 10,000 tabs open, one that freed the cyclic
# garbage of some 40 logins (each request and socket left reference cycles then) held the loop for
# 77-110 ms, and a middle one for 150-400 ms, longer than a logout takes to reach its tabs many
# times over. Since the pings are spread over the interval (realtime/daphne_fixes.py, fix 11; 25
# a slice at 10,000 tabs) a burst no longer reaches 5,000, and at 5,000 the young collections took
# at most 7.5 ms and the middle ones 19.5 ms in the same test (docs/performance.md, "Pings in
# step, and the collector's pauses shorter").
GC_YOUNG_THRESHOLD = 5_000


def tune_gc() -> None:
    """Collect the youngest generation less often (for server processes; see above)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


# glibc gives each new thread a heap (an arena) of its own, up to eight per core, and a block
# freed by one thread goes back to the heap it came from. The server's threads (requests, connects,
# the pools' workers) allocate what open sockets keep, so with PYTHONMALLOC=malloc the sockets'
# memory was spread over a dozen half-empty heaps. Two heaps: 19.8-20.7 KiB per idle tab instead
# of 21.2-22.2 (1,000 tabs, back to back; docs/performance.md, "Two heaps for malloc").
# MALLOC_ARENA_MAX in the environment, read by glibc itself at start, wins over this.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def _load_libc(name: str, argtypes: list):
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


_malloc_trim = _load_libc("malloc_trim", [ctypes.c_size_t])
_mallopt = _load_libc("mallopt", [ctypes.c_int, ctypes.c_int])


def limit_malloc_arenas() -> None:
    """Let glibc's malloc keep at most `MALLOC_ARENAS` heaps (before the server starts threads)."""
    if _mallopt is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


# Run on the loop at every trim, before the collection (`at_trim`).
_at_trim: list[Callable[[], None]] = []


def at_trim(function: Callable[[], None]) -> Callable[[], None]:
    """Have `function` run on the event loop at every trim, before the collection (a decorator).

    For a module that keeps a dict or set of every socket (or of its server's connections): it
    replaces the table with `compacted(table)`. Neither kind shrinks as its entries go, so one
    that held the 10,000 sockets of a wave keeps a table of 0.2-1 MiB, empty, until it is filled
    again; and the memory beside it stays with the process."""
    _at_trim.append(function)
    return function


def compacted(table):
    """A copy of a dict or set (or a defaultdict) with a table sized for what it holds now (a
    dict still two-thirds full is copied at its size, which is then its right one)."""
    return copy.copy(table)


@at_trim
def _compact_event_loop() -> None:
    """asyncio's set of every task (a WeakSet, shared with its C module: rebuilt in place;
    `_scheduled_tasks` from Python 3.12) and the running loop's map of file descriptors (in its
    selector). Like the other tables, these are the process's: it serves from one event loop."""
    tasks = getattr(asyncio.tasks, "_all_tasks", getattr(asyncio.tasks, "_scheduled_tasks", None))
    if isinstance(tasks, weakref.WeakSet) and not tasks._iterating:
        tasks.data = compacted(tasks.data)
    selector = getattr(asyncio.get_running_loop(), "_selector", None)
    if isinstance(getattr(selector, "_fd_to_key", None), dict):
        selector._fd_to_key = compacted(selector._fd_to_key)


# Empties that cache (and, from Python 3.13, CPython's other internal caches with it).
_clear_type_cache = getattr(sys, "_clear_internal_caches", None) or sys._clear_type_cache


class Trimmer:
    """One per event loop (the login watcher owns it and reports every open and close).

    A full collection costs time in proportion to what is alive and blocks the loop, so it runs
    only once most sockets have gone: at least `TRIM_AFTER_CLOSES` closed, and at most half of
    the peak still open. A server that stays busy is never paused for it. It runs `TRIM_DELAY`
    after the last close of the wave (10,000 sockets take a Daphne process some 20 s to close;
    a trim halfway gave back a fifth of what one at the end does), but no later than
    `TRIM_MAX_WAIT` after the wave first made it due."""

    def __init__(self) -> None:
        self.closes = 0
        self.peak = 0
        self._pending: asyncio.TimerHandle | None = None
        self._due_since = 0.0

    def socket_opened(self, open_now: int) -> None:
        self.peak = max(self.peak, open_now)

    def socket_closed(self, open_now: int) -> None:
        if _malloc_trim is None:
            return
        self.closes += 1
        if not self._due(open_now):
            return
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._due_since = loop.time()
        elif loop.time() - self._due_since < TRIM_MAX_WAIT:
            self._pending.cancel()  # still closing: wait for the wave to end
        else:
            return
        self._pending = loop.call_later(TRIM_DELAY, self._trim, loop, open_now)

    def _due(self, open_now: int) -> bool:
        return self.closes >= TRIM_AFTER_CLOSES and open_now <= self.peak // 2

    def _trim(self, loop: asyncio.AbstractEventLoop, open_now: int) -> None:
        self._pending = None
        self.closes = 0
        self.peak = open_now  # the next trim waits for the next wave to come and go
        # Python's cache of attribute lookups on types (4,096 entries, by a hash of the type and
        # the name) holds on to the name in each entry, and a name made for each call (Channels'
        # handler names; the channel layer's batch attributes were too) is a new string each
        # time: after 10,000 tabs, 3,500 of them held pages of the freed sockets' memory that
        # glibc could not give back (docs/performance.md, "Names and tables, let go at the trim").
        _clear_type_cache()
        for compact in _at_trim:
            try:
                compact()
            except Exception:  # a library's internals changed: that table stays as it is
                logger.exception("could not compact the tables of %s", compact.__qualname__)
        # Closed sockets no longer leave cycles (daphne_fixes, fix 12), but what the older
        # generations hold, and any cycle an application left, only a full collection frees,
        # and nothing triggers one on an idle server.
        gc.collect()
        loop.run_in_executor(None, _malloc_trim, 0)
