"""The benchmark's smoke mode: small numbers, to keep `make bench` working. It asserts no speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.live import ROOT

pytestmark = [pytest.mark.live, pytest.mark.timeout(420)]


def test_bench_smoke_runs_every_row_and_writes_results(redis_url):
    # The bench makes its own database (PostgreSQL if it answers, else SQLite), never the suite's.
    env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
        env={**env, "REDIS_URL": redis_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "authenticated handshakes/s" in result.stdout
    data = json.loads((ROOT / "bench" / "results" / "smoke.json").read_text())
    names = [row["name"] for row in data["rows"]]
    assert names[0] == "websockets (reference)" and len(names) == 7
    for row in data["rows"]:
        assert row["handshakes_per_s"] > 0
        assert row["name"].startswith("Daphne floor") or row["storm"]["n"] > 0
    assert all(row["kib_per_tab"] > 0 for row in data["rows"] if "floor" in row["name"])
    # Two processes against one: as many storms on each, taken in turn, and their ratios.
    [pair] = [row for row in data["rows"] if row["name"].startswith("2×")]
    assert len(pair["storm_p99s_ms"]) == len(pair["one_process_storm_p99s_ms"]) == 2
    assert pair["two_over_one"] > 0 and len(pair["two_over_one_each"]) == 2
    assert (ROOT / "bench" / "results" / "smoke-fanout.png").stat().st_size > 0
