"""Idle tabs held for a while: drops, the server's idle CPU, and its memory after they close.

    python bench/idle.py                 # 10,000 tabs for 10 minutes (issue 4's soak)
    python bench/idle.py --tabs 2000 --minutes 2

Starts one Daphne process with production settings (bench/run.py's), opens the tabs from a pinned
load client, samples the server's CPU time from /proc every 10 s while nothing happens, then closes
the tabs and compares the server's memory with what it was before. Prints and writes JSON to
bench/results/idle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
from load import Target, open_tabs

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_SAMPLES = 30  # every 2 s after the tabs close


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def hold(server: run.Server, tabs_count: int, minutes: float) -> dict:
    target = Target(
        {"kind": "django", "ws_urls": [f"ws://127.0.0.1:{server.port}/ws/status/"],
         "http_url": f"http://127.0.0.1:{server.port}"}
    )  # fmt: skip
    sessions = [await target.login(i) for i in range(20)]
    rss_before = run.rss_kib(server.pid)
    tabs = await open_tabs(target, [sessions[i % 20].cookie for i in range(tabs_count)], 50)
    await asyncio.sleep(5)
    rss_open = run.rss_kib(server.pid)
    samples = []
    deadline = time.monotonic() + minutes * 60
    last_cpu, last_t = cpu_seconds(server.pid), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(10)
        cpu, now = cpu_seconds(server.pid), time.monotonic()
        samples.append((cpu - last_cpu) / (now - last_t))
        last_cpu, last_t = cpu, now
    dropped = sum(1 for tab in tabs if tab.close_code is not None)
    await asyncio.gather(*(tab.close() for tab in tabs), return_exceptions=True)
    # The server finishes 10,000 closes and then gives memory back (realtime/memory.py) over some
    # seconds: sample until it has not moved for 10 s, at most a minute.
    after = [run.rss_kib(server.pid)]
    for _ in range(SETTLE_SAMPLES):
        await asyncio.sleep(2)
        after.append(run.rss_kib(server.pid))
        if len(after) > 5 and max(after[-6:]) - min(after[-6:]) < after[-1] // 100:
            break
    rss_after = after[-1]
    return {
        "tabs": tabs_count,
        "minutes": minutes,
        "dropped": dropped,
        "idle_cpu_percent_of_a_core": {
            "mean": 100 * sum(samples) / len(samples),
            "max": 100 * max(samples),
        },
        "rss_kib": {"before": rss_before, "open": rss_open, "after_close": rss_after},
        "rss_kib_every_2s_after_close": after,
        "memory_after_close_vs_before": rss_after / rss_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    if os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})  # this process is the load client: core 1; Daphne gets core 0
    env = run.project_env("cached_db", run.database_url())
    run.prepare(env, 20)
    server = run.daphne(env)
    try:
        run.warm_up([server], "django")
        result = asyncio.run(hold(server, args.tabs, args.minutes))
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "idle.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
