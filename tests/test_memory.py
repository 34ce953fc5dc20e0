"""realtime.memory: when the server collects garbage and trims its heap (tests/test_soak.py
measures what that gives back)."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import socket
import subprocess
import sys

import pytest

from realtime import memory, watch
from tests.helpers import emptied

pytestmark = pytest.mark.skipif(memory._malloc_trim is None, reason="needs glibc's malloc_trim")


async def test_no_trim_while_most_sockets_are_open_then_one_after_they_go(monkeypatch):
    monkeypatch.setattr(memory, "TRIM_DELAY", 0.05)
    trimmer = memory.Trimmer()
    for open_now in range(1, 301):
        trimmer.socket_opened(open_now)
    for open_now in range(299, 150, -1):  # 149 closed, more than half of the peak still open
        trimmer.socket_closed(open_now)
    assert trimmer._pending is None
    trimmer.socket_closed(150)  # half the peak: a wave has come and gone
    assert trimmer._pending is not None
    await asyncio.sleep(0.2)
    assert trimmer._pending is None and trimmer.closes == 0 and trimmer.peak == 150


async def test_the_trim_waits_for_the_end_of_the_wave(monkeypatch):
    monkeypatch.setattr(memory, "TRIM_DELAY", 0.2)
    trimmer = memory.Trimmer()
    for open_now in range(1, 301):
        trimmer.socket_opened(open_now)
    for open_now in range(299, -1, -1):  # due from 150 on; the closes go on for 0.6 s
        trimmer.socket_closed(open_now)
        if open_now % 50 == 0:
            await asyncio.sleep(0.1)
            assert trimmer.closes > 0  # not trimmed while the wave still runs
    await asyncio.sleep(0.4)
    assert trimmer._pending is None and trimmer.closes == 0 and trimmer.peak == 0


async def test_a_wave_that_never_pauses_is_trimmed_within_the_max_wait(monkeypatch):
    monkeypatch.setattr(memory, "TRIM_DELAY", 0.2)
    monkeypatch.setattr(memory, "TRIM_MAX_WAIT", 0.3)
    trimmer = memory.Trimmer()
    for open_now in range(1, 1001):
        trimmer.socket_opened(open_now)
    trimmer.closes = 500  # a wave has taken half the sockets: due from the next close
    open_now = 500
    for _ in range(8):  # ten closes every 0.1 s, never a 0.2 s pause
        for _ in range(10):
            open_now -= 1
            trimmer.socket_closed(open_now)
        await asyncio.sleep(0.1)
    assert trimmer.peak < 1000  # trimmed (and reset) while the closes went on


async def test_a_few_closes_never_trim(monkeypatch):
    trimmer = memory.Trimmer()
    for open_now in range(1, 51):
        trimmer.socket_opened(open_now)
    for open_now in range(49, -1, -1):  # all gone, but fewer than TRIM_AFTER_CLOSES
        trimmer.socket_closed(open_now)
    assert trimmer._pending is None


@pytest.fixture
def gc_threshold():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def collections_during_a_burst(size: int) -> int:
    """How many collections run while `size` objects are alive at once, as pings in flight."""
    runs = []

    def count(phase, info):
        if phase == "start":
            runs.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        burst = [[] for _ in range(size)]
        del burst
    finally:
        gc.callbacks.remove(count)
    return len(runs)


def test_a_slice_of_pings_in_flight_no_longer_sets_off_the_collector(gc_threshold):
    """Spread over the interval (daphne_fixes fix 11), a slice's pings keep a few hundred objects
    alive at once; 4,000 leaves room, and stays under the young threshold, which is low enough
    again to keep each young collection's pause short."""
    gc.set_threshold(700, 10, 10)  # Python's default
    assert collections_during_a_burst(4_000) >= 5
    memory.tune_gc()
    assert collections_during_a_burst(4_000) == 0
    assert collections_during_a_burst(3 * memory.GC_YOUNG_THRESHOLD) >= 2


def test_the_asgi_application_tunes_the_collector():
    code = "import gc, asgi_project.asgi; print(gc.get_threshold()[0])"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == str(memory.GC_YOUNG_THRESHOLD), result.stderr


HEAPS = """
import ctypes, ctypes.util, sys, tempfile, threading
if sys.argv[1] == "asgi":
    import asgi_project.asgi
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
together = threading.Barrier(6)
kept = []
def allocate():  # six threads alive at once, each allocating as a request or connect thread does
    kept.append([b"x" * (64 + i) for i in range(2000)])
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with tempfile.NamedTemporaryFile() as info:
    stream = libc.fopen(info.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(info.name).read().count("<heap nr="))
"""


def malloc_heaps(after: str) -> int:
    """glibc's heaps in a process whose six threads have allocated, after importing `after`."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONMALLOC": "malloc"}
    env.pop("MALLOC_ARENA_MAX", None)
    result = subprocess.run(
        [sys.executable, "-c", HEAPS, after], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_the_asgi_application_keeps_malloc_to_two_heaps():
    assert malloc_heaps("nothing") > 2  # glibc's default: the main thread's, and one per thread
    assert malloc_heaps("asgi") == memory.MALLOC_ARENAS == 2


def test_every_socket_finds_the_cache_object_made_at_startup():
    """Each socket runs in a context of its own; Django would make each its own cache object."""
    code = (
        "import asyncio, asgi_project.asgi\n"
        "from django.core.cache import caches\n"
        "async def cache_of_a_socket():\n"
        "    return caches['default']\n"
        "async def main():\n"
        "    first, second = await asyncio.gather(cache_of_a_socket(), cache_of_a_socket())\n"
        "    print(first is second)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "True", result.stderr


class Looked:
    up = 1


async def test_the_trim_lets_go_of_the_names_of_attribute_lookups(monkeypatch):
    """Python's cache of lookups on types keeps each name it was asked for; a name made per
    message (as Channels makes its handler names) stays alive, scattered, until the trim."""
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: 0)
    name = "".join(["u", "p"])  # a new string, not the interned "up"
    alone = sys.getrefcount(name)
    getattr(Looked, name)
    assert sys.getrefcount(name) > alone  # the cache holds it (for the class and its type)
    memory.Trimmer()._trim(asyncio.get_running_loop(), 0)
    assert sys.getrefcount(name) == alone


async def test_the_trim_compacts_every_registered_table_even_when_one_fails(monkeypatch, caplog):
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: 0)
    ran = []

    def broken() -> None:
        raise AttributeError("a library's internals changed")

    monkeypatch.setattr(memory, "_at_trim", [broken, lambda: ran.append(True)])
    memory.Trimmer()._trim(asyncio.get_running_loop(), 0)
    assert ran == [True]
    assert "could not compact the tables of" in caplog.text and "broken" in caplog.text


def test_a_compacted_table_keeps_its_entries_and_kind_in_a_table_sized_for_them():
    for table in (set(), {}, collections.defaultdict(list)):
        big = emptied(table)
        small = memory.compacted(big)
        assert type(small) is type(big) and small == big
        assert sys.getsizeof(small) < sys.getsizeof(big) // 20
    assert memory.compacted(emptied(collections.defaultdict(list)))["new"] == []


ALL_TASKS = getattr(asyncio.tasks, "_all_tasks", getattr(asyncio.tasks, "_scheduled_tasks", None))


@pytest.mark.skipif(ALL_TASKS is None, reason="asyncio keeps no WeakSet of tasks here")
async def test_the_event_loops_tables_are_compacted_at_the_trim():
    loop = asyncio.get_running_loop()
    pairs = [socket.socketpair() for _ in range(400)]  # 800 descriptors: under a limit of 1,024
    try:
        for reader, _ in pairs:
            loop.add_reader(reader, lambda: None)
        for reader, _ in pairs[3:]:
            loop.remove_reader(reader)
        sleepers = [asyncio.create_task(asyncio.sleep(0)) for _ in range(20_000)]
        await asyncio.gather(*sleepers)
        del sleepers
        for _ in range(3):  # the tasks' done callbacks run, and let go of them
            await asyncio.sleep(0)
        gc.collect()
        tasks, fds = ALL_TASKS, loop._selector._fd_to_key
        # Sized for what they hold, as a new table of the same entries is (the process's set of
        # tasks also holds those other tests have left alive).
        sized = sys.getsizeof(set(tasks.data)), sys.getsizeof(dict(fds))
        assert sys.getsizeof(tasks.data) > 4 * sized[0] and sys.getsizeof(fds) > 4 * sized[1]
        remaining, running = (set(tasks), dict(fds)), asyncio.all_tasks()
        memory._compact_event_loop()
        assert set(tasks) == remaining[0] and loop._selector._fd_to_key == remaining[1]
        assert sys.getsizeof(tasks.data) <= sized[0]
        assert sys.getsizeof(loop._selector._fd_to_key) <= sized[1]
        another = asyncio.create_task(asyncio.sleep(0))  # still registered and found
        assert asyncio.all_tasks() == running | {another}
        await another
    finally:
        for reader, writer in pairs:
            if reader.fileno() in loop._selector._fd_to_key:
                loop.remove_reader(reader)
            reader.close()
            writer.close()


async def test_the_login_watchers_tables_are_compacted_at_the_trim():
    found = watch.watcher()
    emptied(found.open)
    emptied(found.sockets)
    emptied(found.expires)
    login = "a login with 10,000 tabs, 3 left"
    found.sockets[login] = emptied(set())

    def tables() -> tuple:
        return found.open, found.sockets, found.expires, found.sockets[login]

    before = [(t.copy(), sys.getsizeof(t)) for t in tables()]
    watch._compact()
    for table, (entries, size) in zip(tables(), before, strict=True):
        assert table == entries and sys.getsizeof(table) < size // 20
    found.open.clear(), found.sockets.clear(), found.expires.clear()
