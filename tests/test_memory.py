"""realtime.memory: when the server collects garbage and trims its heap (tests/test_soak.py
measures what that gives back)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys

import pytest

from realtime import memory

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
