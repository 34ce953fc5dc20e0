"""`make bench`: the project against a plain `websockets` server, side by side, in one run.

Starts each server pinned to core 0 (where taskset exists), runs the load client (bench/load.py)
in its own process on core 1, reads server memory from /proc, and prints one table with the
ratios to the reference. Writes bench/results/latest.json and bench/results/fanout.png.

    python bench/run.py            # full run, under 10 minutes
    python bench/run.py --smoke    # small numbers, for CI: keeps the benchmark working
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PASSWORD = "bench-pass-1234"
PG_URL = "postgres://postgres@127.0.0.1:5432/live_session_bench"
# Daphne pings each socket this often in production (Procfile; docs/deployment.md).
PING_INTERVAL = re.search(r"--ping-interval (\d+)", (ROOT / "Procfile").read_text())[1]

FULL = {
    "storm": {"sessions": 20, "tabs": 1000, "in_flight": 50},
    # The rows the storm's targets compare (the reference, one process, two): three storms each.
    "storm_repeated": {"sessions": 20, "tabs": 1000, "in_flight": 50, "repeats": 3},
    # Two processes against one: three storms on each, in turn (bench/load.py `storms_in_turn`).
    "storms_in_turn": {"sessions": 20, "tabs": 1000, "in_flight": 50, "repeats": 3},
    "single": {
        "background_sessions": 20,
        "background": 10000,
        "tabs": 10,
        "repeats": 30,
        "in_flight": 50,
    },
    "single_small": {
        "background_sessions": 20,
        "background": 1000,
        "tabs": 10,
        "repeats": 20,
        "in_flight": 50,
    },
    "handshakes": {"tabs": 1000, "in_flight": 50},
    "fanout": {"sizes": [1, 10, 100, 1000, 10000], "repeats": 5, "in_flight": 50},
    "auth": {"logins": 40, "in_flight": 2},
    "everywhere": {"sessions": 100, "tabs_per_session": 10, "in_flight": 50},
    "users": 200,
}
SMOKE = {
    "storm": {"sessions": 4, "tabs": 40, "in_flight": 10},
    "storm_repeated": {"sessions": 4, "tabs": 40, "in_flight": 10, "repeats": 2},
    "storms_in_turn": {"sessions": 4, "tabs": 40, "in_flight": 10, "repeats": 2},
    "single": {
        "background_sessions": 2,
        "background": 20,
        "tabs": 5,
        "repeats": 3,
        "in_flight": 10,
    },
    "single_small": {
        "background_sessions": 2,
        "background": 20,
        "tabs": 5,
        "repeats": 3,
        "in_flight": 10,
    },
    "handshakes": {"tabs": 40, "in_flight": 10},
    "fanout": {"sizes": [1, 10, 100], "repeats": 2, "in_flight": 10},
    "auth": {"logins": 4, "in_flight": 2},
    "everywhere": {"sessions": 4, "tabs_per_session": 3, "in_flight": 10},
    "users": 20,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(core: int, command: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") else []) + command


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def database_url() -> str:
    """PostgreSQL when it answers on the standard port (production-like), else an SQLite file."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    try:
        import psycopg

        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=2
        ) as conn:
            conn.execute("DROP DATABASE IF EXISTS live_session_bench")
            conn.execute("CREATE DATABASE live_session_bench")
        return PG_URL
    except Exception:
        return f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"


def project_env(engine: str, db_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "asgi_project.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": db_url,
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        "DJANGO_SESSION_ENGINE": engine,
        "PYTHONMALLOC": "malloc",  # as the Procfile runs it (realtime/memory.py)
        "CHANNEL_LAYER_PREFIX": "asgi-bench",  # apart from the tests' and the site's keys
        # One session holds up to 10,000 tabs here; the production limits would refuse them.
        "LIVE_MAX_SOCKETS_PER_LOGIN": "100000",
        "LIVE_MAX_SOCKETS_PER_USER": "100000",
    }


def prepare(env: dict, users: int) -> None:
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "collectstatic", "--no-input", "-v0"], cwd=ROOT, env=env, check=True)
    code = (
        "from django.contrib.auth import get_user_model; from django.contrib.auth.hashers import "
        f"make_password; U = get_user_model(); h = make_password({PASSWORD!r}); "
        "U.objects.filter(username__startswith='bench').delete(); "
        f"U.objects.bulk_create([U(username=f'bench{{i}}', password=h) for i in range({users})])"
    )
    subprocess.run([*manage, "shell", "-c", code], cwd=ROOT, env=env, check=True)


class Server:
    """One server process, pinned to core 0, stopped with SIGTERM."""

    def __init__(self, command: list[str], env: dict, port: int) -> None:
        self.port = port
        self.log = Path(tempfile.mkdtemp()) / "server.log"
        self.process = subprocess.Popen(
            pinned(0, command),
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"server on {port} did not start: {command}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def daphne(env: dict, app: str = "asgi_project.asgi:application") -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "--access-log",
        os.devnull,
        "--ping-interval",
        PING_INTERVAL,
        app,
    ]
    return Server(command, env, port)


def floor(fixes: bool) -> Server:
    """Daphne with bench/floor_app.py: Daphne's own cost, with or without the project's fixes."""
    env = {**os.environ, "FLOOR_FIXES": "1" if fixes else "0"}
    return daphne(env, "bench.floor_app:application")


def uvicorn(env: dict) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "asgi_project.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws",
        "websockets",
        "--ws-per-message-deflate",
        "false",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return Server(command, env, port)


def reference(tokens_file: Path) -> Server:
    port = free_port()
    command = [sys.executable, "bench/reference_server.py", str(port), str(tokens_file)]
    return Server(command, dict(os.environ), port)


def warm_up(servers: list[Server], kind: str) -> None:
    if kind == "django":
        for server in servers:
            headers = {"X-Forwarded-Proto": "https"}
            httpx.get(f"http://127.0.0.1:{server.port}/accounts/login/", headers=headers)
    time.sleep(0.5)


def run_client(target: dict, scenario: str, params: dict, servers: list[Server]) -> dict:
    """Run one scenario in a pinned client process; measure server memory at its pause."""
    spec = json.dumps({"target": target, "scenario": scenario, "params": params})
    client = subprocess.Popen(
        pinned(1, [sys.executable, "bench/load.py", spec]),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    baseline = sum(rss_kib(s.pid) for s in servers)
    result: dict = {"rss_base_kib": baseline}
    for line in client.stdout:
        if line.startswith("PAUSE "):
            label = line.split()[1]
            result[f"rss_{label}_kib"] = sum(rss_kib(s.pid) for s in servers)
            client.stdin.write("\n")
            client.stdin.flush()
        elif line.startswith("RESULT "):
            result.update(json.loads(line[len("RESULT ") :]))
    if client.wait(600) != 0:
        raise RuntimeError(f"load client failed in {scenario}")
    if "rss_idle_kib" in result and "tabs" in params:
        # Per tab: from the sessions logged in to their tabs open and idle. The logins' own
        # memory is not the tabs' (the reference makes none); from the client's start it is
        # kept as `kib_per_tab_from_start`, the figure before 2026-11-27 (docs/performance.md).
        idle = result["rss_idle_kib"]
        result["kib_per_tab"] = (idle - result["rss_sessions_kib"]) / params["tabs"]
        result["kib_per_tab_from_start"] = (idle - baseline) / params["tabs"]
    return result


def target_spec(kind: str, servers: list[Server]) -> dict:
    """What the load client needs of a target: its sockets' URLs, one per process, and the first
    process's for HTTP."""
    return {
        "kind": kind,
        "ws_urls": [f"ws://127.0.0.1:{s.port}/ws/status/" for s in servers],
        "http_url": f"http://127.0.0.1:{servers[0].port}",
        "tokens": TOKENS,
    }


# The plan's entries that run another scenario with other numbers.
SCENARIO_OF = {"single_small": "single", "storm_repeated": "storm"}


def measure_row(name: str, kind: str, start, scenarios: list[str], plan: dict, alone=None) -> dict:
    """Start the row's servers fresh, run its scenarios, stop them. `alone` starts one more
    process beside them, a target of its own (`storms_in_turn`); its memory is not the row's."""
    servers = start()
    lone = [alone()] if alone else []
    try:
        warm_up(servers + lone, kind)
        target = target_spec(kind, servers)
        if lone:
            target["alone"] = target_spec(kind, lone)
        row: dict = {"name": name}
        for scenario in scenarios:
            print(f"  {name}: {scenario}", flush=True)
            key = SCENARIO_OF.get(scenario, scenario)
            row.update(run_client(target, key, plan[scenario], servers))
        return row
    finally:
        for server in servers + lone:
            server.stop()


def hasher_ceiling(env: dict) -> float:
    """Password checks per second on one core: the ceiling for login requests."""
    code = (
        "import time, django; django.setup(); from django.contrib.auth.hashers import "
        "make_password, check_password; h = make_password('x'); t = time.perf_counter(); "
        "[check_password('x', h) for _ in range(5)]; print(5 / (time.perf_counter() - t))"
    )
    out = subprocess.run(
        pinned(0, [sys.executable, "-c", code]),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


TOKENS: list[str] = []

METRICS = [
    ("authenticated handshakes/s", lambda r: r.get("handshakes_per_s"), "{:.0f}", True),
    ("server KiB per idle tab", lambda r: r.get("kib_per_tab"), "{:.1f}", False),
    ("  the same, logins included", lambda r: r.get("kib_per_tab_from_start"), "{:.1f}", False),
    (
        "storm: p99 ms until each tab knows",
        lambda r: r.get("storm", {}).get("p99_ms"),
        "{:.0f}",
        False,
    ),
    (
        "one 10-tab session: p99 ms, last tab",
        lambda r: r.get("single", {}).get("p99_ms"),
        "{:.1f}",
        False,
    ),
    (
        "logout everywhere, 100 x 10 tabs: p99 ms",
        lambda r: r.get("everywhere", {}).get("p99_ms"),
        "{:.0f}",
        False,
    ),
    (
        "two processes / one: storm p99, in turn",
        lambda r: r.get("two_over_one"),
        "{:.2f}",
        False,
    ),
    ("login requests/s", lambda r: r.get("logins_per_s"), "{:.1f}", True),
    ("logout requests/s", lambda r: r.get("logouts_per_s"), "{:.0f}", True),
    (
        "tabs dropped before their logout",
        lambda r: sum(v for k, v in r.items() if k.endswith("_lost_tabs")),
        "{:.0f}",
        False,
    ),
]


def table(rows: list[dict]) -> str:
    reference = rows[0]
    header = f"{'metric':40}" + "".join(f"{r['name']:>24}" for r in rows)
    lines = [header, "-" * len(header)]
    for label, get, fmt, _ in METRICS:
        cells = []
        for row in rows:
            value, ref = get(row), get(reference)
            if value is None:
                cells.append(f"{'—':>24}")
                continue
            ratio = f" ({value / ref:.2f}×)" if ref and row is not reference else ""
            cells.append(f"{fmt.format(value) + ratio:>24}")
        lines.append(f"{label:40}" + "".join(cells))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if "fanout_ms" in row:
            sizes = [int(n) for n in row["fanout_ms"]]
            ax.plot(sizes, list(row["fanout_ms"].values()), marker="o", label=row["name"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tabs of the session that logs out")
    ax.set_ylabel("ms until the last tab knows (median)")
    ax.set_title("Logout fan-out latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small numbers (CI)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    started = time.monotonic()
    db_url = database_url()
    env = {name: project_env(name, db_url) for name in ("cached_db", "db")}
    print(f"database: {db_url.split('@')[-1]}; preparing {plan['users']} users", flush=True)
    prepare(env["cached_db"], plan["users"])
    TOKENS.extend(secrets.token_urlsafe(24) for _ in range(plan["users"]))
    tokens_file = Path(tempfile.mkdtemp()) / "sessions.json"
    tokens_file.write_text(json.dumps({t: f"bench{i}" for i, t in enumerate(TOKENS)}))

    main_set = ["storm_repeated", "single", "fanout", "everywhere", "auth"]
    small_set = ["storm", "single_small", "auth"]
    rows = [
        measure_row(
            "websockets (reference)",
            "reference",
            lambda: [reference(tokens_file)],
            ["storm_repeated", "single", "fanout", "everywhere"],
            plan,
        ),
        measure_row(
            "Daphne, cached_db", "django", lambda: [daphne(env["cached_db"])], main_set, plan
        ),
        measure_row("Daphne, db", "django", lambda: [daphne(env["db"])], small_set, plan),
        measure_row(
            "uvicorn, cached_db", "django", lambda: [uvicorn(env["cached_db"])], small_set, plan
        ),
        measure_row(
            "2× Daphne, cached_db",
            "django",
            lambda: [daphne(env["cached_db"]), daphne(env["cached_db"])],
            ["storms_in_turn", "single_small"],
            plan,
            alone=lambda: daphne(env["cached_db"]),
        ),
        # Daphne's own floor: an app that only accepts and sends the status (bench/floor_app.py).
        measure_row("Daphne floor, stock", "floor", lambda: [floor(False)], ["handshakes"], plan),
        measure_row("Daphne floor, fixed", "floor", lambda: [floor(True)], ["handshakes"], plan),
    ]
    ceiling = hasher_ceiling(env["cached_db"])
    print()
    print(table(rows))
    print(f"\npassword hasher ceiling: {ceiling:.1f} checks/s on one core")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "smoke": args.smoke,
        "database": db_url.split("@")[-1],
        "plan": plan,
        "rows": rows,
        "hasher_checks_per_s": ceiling,
        "seconds": time.monotonic() - started,
    }
    name = "smoke" if args.smoke else "latest"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    plot(rows, RESULTS / f"{'smoke-' if args.smoke else ''}fanout.png")
    print(f"results: bench/results/{name}.json, took {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
