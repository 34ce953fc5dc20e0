"""The load client: runs one scenario against one target and prints its result as JSON.

Started by bench/run.py in its own process (pinned to its own core where taskset exists). Talks to
the orchestrator on stdout/stdin: `PAUSE <label>` means "measure the server now", answered by any
line; the last line is `RESULT <json>`.

A target is either the project (`django`: logs in over HTTP, logs out with the logout view) or the
reference server (`reference`: sessions are known tokens, logout through its control socket).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PASSWORD = "bench-pass-1234"


def pause(label: str) -> None:
    print(f"PAUSE {label}", flush=True)
    sys.stdin.readline()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict:
    return {
        "n": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


class Session:
    def __init__(self, cookie: str, csrf: str | None = None, token: str | None = None) -> None:
        self.cookie, self.csrf, self.token = cookie, csrf, token


class Target:
    def __init__(self, spec: dict) -> None:
        self.kind = spec["kind"]
        self.ws_urls = spec["ws_urls"]  # one per server process
        self.http_url = spec.get("http_url")
        self.tokens = list(spec.get("tokens", []))
        # Production settings: the proxy's header says HTTPS; CSRF then checks the Referer.
        referer = (self.http_url or "").replace("http://", "https://") + "/"
        self.headers = {"X-Forwarded-Proto": "https", "Referer": referer}
        self.http = httpx.AsyncClient(base_url=self.http_url or "http://127.0.0.1", timeout=60)
        self.control: ClientConnection | None = None
        # The row's lone process, beside its pair (`storms_in_turn`): a target of its own.
        self.alone = Target(spec["alone"]) if spec.get("alone") else None

    async def _request(self, method: str, path: str, jar: dict, **kwargs) -> httpx.Response:
        """One request carrying exactly `jar`'s cookies; cookies it sets go back into `jar`."""
        self.http.cookies.clear()
        cookie = "; ".join(f"{name}={value}" for name, value in jar.items())
        headers = {**self.headers, "Cookie": cookie}
        response = await self.http.request(method, path, headers=headers, **kwargs)
        jar.update({name: value for name, value in response.cookies.items()})
        return response

    async def login(self, index: int, *, user: int | None = None) -> Session:
        """Session number `index`, as user `bench{user}` (default: `bench{index}`)."""
        if self.kind == "reference":
            token = self.tokens[index]
            return Session(f"sessionid={token}", token=token)
        jar: dict[str, str] = {}
        await self._request("GET", "/accounts/login/", jar)
        data = {
            "username": f"bench{index if user is None else user}",
            "password": PASSWORD,
            "csrfmiddlewaretoken": jar["csrftoken"],
            "remember": "on",
        }
        response = await self._request("POST", "/accounts/login/", jar, data=data)
        assert response.status_code == 302, f"login failed: {response.status_code}"
        cookie = "; ".join(f"{name}={value}" for name, value in jar.items())
        return Session(cookie, csrf=jar["csrftoken"])

    async def logout(self, sessions: list[Session]) -> None:
        if self.kind == "reference":
            if self.control is None:
                base = urlsplit(self.ws_urls[0])
                self.control = await connect(
                    f"ws://{base.netloc}/control", compression=None, ping_interval=None
                )
            await self.control.send(json.dumps({"logout": [s.token for s in sessions]}))
            await self.control.recv()
            return

        async def one(session: Session) -> None:
            self.http.cookies.clear()
            response = await self.http.post(
                "/accounts/logout/",
                data={"csrfmiddlewaretoken": session.csrf},
                headers={**self.headers, "Cookie": session.cookie},
            )
            assert response.status_code == 302, f"logout failed: {response.status_code}"

        await asyncio.gather(*(one(s) for s in sessions))

    async def logout_everywhere(self, sessions: list[Session]) -> None:
        """All `sessions` (one user's) end: the reference logs them out in one control message;
        the project through POST /accounts/logout/everywhere/ from the first."""
        if self.kind == "reference":
            await self.logout(sessions)
            return
        self.http.cookies.clear()
        response = await self.http.post(
            "/accounts/logout/everywhere/",
            data={"csrfmiddlewaretoken": sessions[0].csrf},
            headers={**self.headers, "Cookie": sessions[0].cookie},
        )
        assert response.status_code == 302, f"logout everywhere failed: {response.status_code}"


async def open_tabs(target: Target, cookies: list[str], in_flight: int) -> list[ClientConnection]:
    """Open one tab per cookie, `in_flight` handshakes at a time, spread over the processes."""
    gate = asyncio.Semaphore(in_flight)
    tabs: list[ClientConnection] = [None] * len(cookies)  # type: ignore[list-item]

    async def one(i: int) -> None:
        async with gate:
            url = target.ws_urls[i % len(target.ws_urls)]
            tab = await connect(
                url,
                origin="https://127.0.0.1",
                compression=None,
                ping_interval=None,
                open_timeout=60,
                additional_headers={"Cookie": cookies[i]},
            )
            status = json.loads(await tab.recv())
            assert status["type"] == "status" and status["authenticated"], status
            tabs[i] = tab

    await asyncio.gather(*(one(i) for i in range(len(cookies))))
    return tabs


LOST: list[int] = []  # tabs whose connection dropped before their logout message was read


async def until_logout(tab: ClientConnection, started: float) -> float | None:
    """Seconds until this tab read its logout message; None if the connection dropped first
    (Daphne's autobahn aborts a socket whose close reply takes over 1 s; one client process
    reading 10,000 closing sockets at once can be that slow)."""
    try:
        while True:
            message = json.loads(await tab.recv())
            if message["type"] == "logout":
                return time.perf_counter() - started
    except ConnectionClosed:
        LOST.append(1)
        return None


TRIGGER_SECONDS: list[float] = []  # how long each logout trigger (the POSTs) took


async def logout_latencies(target, sessions, tabs) -> list[float]:
    started = time.perf_counter()
    waits = [asyncio.create_task(until_logout(tab, started)) for tab in tabs]
    await target.logout(sessions)
    TRIGGER_SECONDS.append(time.perf_counter() - started)
    return [seconds for seconds in await asyncio.gather(*waits) if seconds is not None]


async def close_all(tabs) -> None:
    await asyncio.gather(*(tab.close() for tab in tabs if tab), return_exceptions=True)


# --- Scenarios -----------------------------------------------------------------------------------


async def storm(target: Target, p: dict) -> dict:
    """S sessions x T tabs: handshake rate, a pause for memory, then all log out at once; run
    `repeats` times (default once), each with new logins. One storm's p99 varies by half from
    run to run on a busy machine: the figures are the run with the median p99, every run's p99
    is in `storm_p99s_ms`, and the handshake rate is the median. The memory is read in the first
    run only, once the sessions have logged in and again with the tabs open and idle."""
    runs = [await storm_once(target, p, pauses=n == 0) for n in range(p.get("repeats", 1))]
    p99s = [run["storm"]["p99_ms"] for run in runs]
    median_run = sorted(runs, key=lambda run: run["storm"]["p99_ms"])[len(runs) // 2]
    rate = statistics.median(run["handshakes_per_s"] for run in runs)
    return {**median_run, "handshakes_per_s": rate, "storm_p99s_ms": p99s}


async def storm_once(target: Target, p: dict, *, pauses: bool) -> dict:
    sessions = [await target.login(i) for i in range(p["sessions"])]
    if pauses:
        pause("sessions")
    cookies = [sessions[i % len(sessions)].cookie for i in range(p["tabs"])]
    started = time.perf_counter()
    tabs = await open_tabs(target, cookies, p["in_flight"])
    rate = len(tabs) / (time.perf_counter() - started)
    await asyncio.sleep(1)
    if pauses:
        pause("idle")
    latencies = await logout_latencies(target, sessions, tabs)
    await close_all(tabs)
    storm_summary = {**summary(latencies), "trigger_ms": TRIGGER_SECONDS[-1] * 1000}
    return {"handshakes_per_s": rate, "storm": storm_summary}


async def storms_in_turn(target: Target, p: dict) -> dict:
    """`repeats` storms on the two processes (`target`) and as many on the lone one
    (`target.alone`), in turn, with the order swapped every round: each pair of storms ran minutes
    apart when they were separate rows, and one storm's p99 varies by half from run to run, so
    their ratio did too. The verdict is the median of the rounds' ratios (`two_over_one`). The
    two processes' figures are as in `storm`; memory is read in their first storm."""
    two, one = [], []
    for n in range(p["repeats"]):
        order = [(two, target), (one, target.alone)]
        for runs, side in order if n % 2 == 0 else order[::-1]:
            runs.append(await storm_once(side, p, pauses=n == 0 and side is target))
    ratios = [a["storm"]["p99_ms"] / b["storm"]["p99_ms"] for a, b in zip(two, one, strict=True)]
    median_run = sorted(two, key=lambda run: run["storm"]["p99_ms"])[len(two) // 2]
    return {
        **median_run,
        "handshakes_per_s": statistics.median(run["handshakes_per_s"] for run in two),
        "storm_p99s_ms": [run["storm"]["p99_ms"] for run in two],
        "one_process_storm_p99s_ms": [run["storm"]["p99_ms"] for run in one],
        "two_over_one_each": ratios,
        "two_over_one": statistics.median(ratios),
    }


async def handshakes(target: Target, p: dict) -> dict:
    """T tabs: the handshake rate and, with the tabs idle, a pause for memory (the floor rows,
    whose server knows no sessions)."""
    pause("sessions")
    started = time.perf_counter()
    tabs = await open_tabs(target, ["sessionid=floor"] * p["tabs"], p["in_flight"])
    rate = len(tabs) / (time.perf_counter() - started)
    await asyncio.sleep(1)
    pause("idle")
    await close_all(tabs)
    return {"handshakes_per_s": rate}


async def single(target: Target, p: dict) -> dict:
    """One session with `tabs` tabs logs out, `repeats` times, with `background` other tabs open."""
    background_sessions = [await target.login(i) for i in range(p["background_sessions"])]
    cookies = [
        background_sessions[i % len(background_sessions)].cookie for i in range(p["background"])
    ]
    background = await open_tabs(target, cookies, p["in_flight"]) if cookies else []
    worst = []
    for r in range(p["repeats"]):
        session = await target.login(p["background_sessions"] + r)
        tabs = await open_tabs(target, [session.cookie] * p["tabs"], p["in_flight"])
        await asyncio.sleep(0.05)
        worst.append(max(await logout_latencies(target, [session], tabs)))
        await close_all(tabs)
    await close_all(background)
    return {"single": summary(worst)}


async def fanout(target: Target, p: dict) -> dict:
    """One session with N tabs logs out: time until the last tab knows, for each N."""
    results = {}
    index = 0
    for n in p["sizes"]:
        samples = []
        for _ in range(p["repeats"] if n <= 100 else 1):
            session = await target.login(index)
            index += 1
            tabs = await open_tabs(target, [session.cookie] * n, p["in_flight"])
            await asyncio.sleep(0.2)
            samples.append(max(await logout_latencies(target, [session], tabs)))
            await close_all(tabs)
        results[str(n)] = statistics.median(samples) * 1000
    return {"fanout_ms": results}


async def everywhere(target: Target, p: dict) -> dict:
    """One user with S sessions x T tabs logs out everywhere: p99 until each tab knows."""
    sessions = [await target.login(i, user=0) for i in range(p["sessions"])]
    cookies = [s.cookie for s in sessions for _ in range(p["tabs_per_session"])]
    tabs = await open_tabs(target, cookies, p["in_flight"])
    await asyncio.sleep(1)
    started = time.perf_counter()
    waits = [asyncio.create_task(until_logout(tab, started)) for tab in tabs]
    await target.logout_everywhere(sessions)
    latencies = [seconds for seconds in await asyncio.gather(*waits) if seconds is not None]
    await close_all(tabs)
    return {"everywhere": summary(latencies)}


async def auth(target: Target, p: dict) -> dict:
    """Login and logout requests per second, `in_flight` at a time (password hashing included)."""
    gate = asyncio.Semaphore(p["in_flight"])

    async def login(i: int) -> Session:
        async with gate:
            return await target.login(i)

    started = time.perf_counter()
    sessions = await asyncio.gather(*(login(i) for i in range(p["logins"])))
    logins_per_s = len(sessions) / (time.perf_counter() - started)
    started = time.perf_counter()
    for chunk in range(0, len(sessions), p["in_flight"]):
        await target.logout(list(sessions[chunk : chunk + p["in_flight"]]))
    return {
        "logins_per_s": logins_per_s,
        "logouts_per_s": len(sessions) / (time.perf_counter() - started),
    }


async def main() -> None:
    spec = json.loads(sys.argv[1])
    target = Target(spec["target"])
    scenario = {
        "storm": storm,
        "storms_in_turn": storms_in_turn,
        "handshakes": handshakes,
        "single": single,
        "fanout": fanout,
        "auth": auth,
        "everywhere": everywhere,
    }[spec["scenario"]]
    result = await scenario(target, spec["params"])
    result[f"{spec['scenario']}_lost_tabs"] = len(LOST)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
