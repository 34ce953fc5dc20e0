"""realtime.memory: when the server collects garbage and trims its heap (tests/test_soak.py
measures what that gives back)."""

from __future__ import annotations

import asyncio

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
    assert trimmer._pending is None and trimmer.closes == 0 and trimmer.peak == 0


async def test_a_few_closes_never_trim(monkeypatch):
    trimmer = memory.Trimmer()
    for open_now in range(1, 51):
        trimmer.socket_opened(open_now)
    for open_now in range(49, -1, -1):  # all gone, but fewer than TRIM_AFTER_CLOSES
        trimmer.socket_closed(open_now)
    assert trimmer._pending is None
