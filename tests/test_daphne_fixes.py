"""Daphne's connection checker, input queues, WebSocket writes and handshakes, its timeout checks
and POST bodies, as realtime/daphne_fixes.py leaves them (fixes 4 to 13), on Daphne's own classes:
the checker reaps finished applications and closes out disconnected connections as Daphne does,
never looks at a connection with nothing to do, a WebSocket's application gets a `ChannelQueue`
for its input, a WebSocket's write is sent at once, in order with anything still waiting, an open
WebSocket keeps no copy of its handshake, the HTTP request it came from is let go, the timeout
checks of a round are spread over it in slices, a POST's body reaches the app unparsed by
Twisted, the pings of sockets that opened together are spread over the ping interval, a closed
socket is freed without the cyclic garbage collector, and the tables that held a wave of sockets
are rebuilt for what they hold at the trim.

(The other fixes are tested through real Daphne processes: close codes in test_hostile.py and
test_live.py, shutdown in test_faults.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
import time
import types
import weakref

import pytest
from daphne.server import Server

from realtime.layers import ChannelQueue
from tests.helpers import emptied


class Protocol:
    """Stands in for Daphne's HTTP or WebSocket protocol: the checker only calls this."""

    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []

    def handle_exception(self, exception: BaseException) -> None:
        self.exceptions.append(exception)


class WatchedDetails(dict):
    """A connection's details that count how often the checker reads them."""

    reads = 0

    def get(self, *args):
        WatchedDetails.reads += 1
        return super().get(*args)


async def finishes(scope, receive, send) -> None:
    return None


async def fails(scope, receive, send) -> None:
    raise ValueError("boom")


async def hangs(scope, receive, send) -> None:
    await asyncio.Event().wait()


async def echoes(scope, receive, send) -> None:
    while True:
        await send(await receive())


def application(scope, receive, send):
    apps = {"finishes": finishes, "fails": fails, "hangs": hangs, "echoes": echoes}
    return apps[scope.get("app", "hangs")](scope, receive, send)


@pytest.fixture
def server():
    # An endpoint is required, but nothing listens: the server is never run.
    server = Server(application, ["tcp:port=0:interface=127.0.0.1"], application_close_timeout=0.2)
    server.connections = {}  # as Server.run() sets it
    yield server
    for details in server.connections.values():
        instance = details.get("application_instance")
        if instance is not None:
            instance.cancel()


def connect(server: Server, app: str) -> Protocol:
    protocol = Protocol()
    server.protocol_connected(protocol)
    server.create_application(protocol, {"type": "websocket", "app": app})
    return protocol


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_finished_applications_are_reaped_and_their_errors_reported(server, caplog):
    done, failed, running = (connect(server, app) for app in ("finishes", "fails", "hangs"))
    await settle()
    with caplog.at_level(logging.ERROR, logger="daphne.server"):
        server.application_checker()
    assert "application_instance" not in server.connections[done]
    assert "application_instance" not in server.connections[failed]
    assert [str(error) for error in failed.exceptions] == ["boom"]  # the socket is told: 1011
    assert "Exception inside application: boom" in caplog.text
    assert "application_instance" in server.connections[running]
    assert done.exceptions == [] and running.exceptions == []


async def test_a_disconnected_connection_is_removed_once_its_application_ends(server):
    quick, slow = connect(server, "finishes"), connect(server, "hangs")
    await settle()
    server.protocol_disconnected(quick)
    server.protocol_disconnected(slow)
    server.application_checker()
    assert quick not in server.connections
    assert slow in server.connections  # still inside application_close_timeout
    await asyncio.sleep(0.3)
    server.application_checker()  # past the timeout: cancelled
    instance = server.connections[slow]["application_instance"]
    await settle()
    assert instance.cancelled()
    server.application_checker()
    assert slow not in server.connections
    assert server.live_due == set()


async def test_connections_with_nothing_to_do_are_not_visited(server):
    idle = [connect(server, "hangs") for _ in range(1000)]
    for protocol in idle:
        server.connections[protocol] = WatchedDetails(server.connections[protocol])
    finished = connect(server, "finishes")
    await settle()
    WatchedDetails.reads = 0
    server.application_checker()
    assert WatchedDetails.reads == 0
    assert "application_instance" not in server.connections[finished]
    server.protocol_disconnected(idle[0])
    server.application_checker()
    assert 0 < WatchedDetails.reads <= 4  # the one disconnected connection, and only it


async def test_a_websocket_reads_its_input_from_a_channel_queue_in_order(server):
    received = []

    async def handle_reply(protocol, message) -> None:
        received.append(message)

    server.handle_reply = handle_reply
    protocol = Protocol()
    server.protocol_connected(protocol)
    queue = server.create_application(protocol, {"type": "websocket", "app": "echoes"})
    assert isinstance(queue, ChannelQueue) and queue  # Daphne tests the queue's truth
    for n in range(3):
        queue.put_nowait({"type": "websocket.receive", "text": str(n)})
    await settle()
    assert [message["text"] for message in received] == ["0", "1", "2"]

    http = Protocol()
    server.protocol_connected(http)
    assert isinstance(
        server.create_application(http, {"type": "http", "app": "hangs"}), asyncio.Queue
    )


def test_autobahn_formats_debug_log_arguments_only_when_written():
    from autobahn import util
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol

    for module in (protocol, twisted_websocket):  # sending frames; closing sockets
        value = module.hlval("peer")
        assert not isinstance(value, str)  # nothing formatted yet
        assert f"{value}" == util.hlval("peer")
        assert str(module.hltype(Server.run)) == util.hltype(Server.run)


def upgrade_request(path: str = "/ws/status/") -> bytes:
    """A browser's WebSocket upgrade, with a session cookie."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nCookie: sessionid=abc\r\n\r\n"
    ).encode()


@contextlib.contextmanager
def on_loopback(factory):
    """A protocol of `factory` on a real loopback TCP connection (the reactor never runs): its
    transport, and the client's end of the socket; autobahn's timers are cancelled after."""
    from twisted.internet import reactor, tcp

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=2)
    accepted, address = listener.accept()
    listener.close()
    accepted.setblocking(False)
    before = set(reactor.getDelayedCalls())
    transport = tcp.Server(accepted, factory.buildProtocol(address), address, None, 1, reactor)
    try:
        transport.protocol.makeConnection(transport)  # (no other reference to the protocol kept)
        yield transport, client
    finally:
        for call in set(reactor.getDelayedCalls()) - before:  # autobahn's timeouts
            call.cancel()
        transport.stopReading()
        transport.stopWriting()
        accepted.close()
        client.close()


@pytest.fixture
def websocket_transport(server):
    """Daphne's WebSocket protocol on a real loopback TCP connection."""
    from daphne.ws_protocol import WebSocketFactory

    with on_loopback(WebSocketFactory(server, server="Daphne")) as connection:
        yield connection


def test_a_websocket_write_is_sent_at_once_in_order_with_what_waits(websocket_transport):
    transport, client = websocket_transport
    assert type(transport).__name__ == "WriteAtOnce" and transport.getTcpNoDelay()
    transport.write(b"logout")
    assert client.recv(100) == b"logout"  # no turn of the event loop in between

    # More than the socket takes: the rest waits in Twisted's buffer, and what is written next
    # goes after it, not before.
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 8192
    transport.write(big)
    transport.write(b"close")
    assert transport._tempDataBuffer or len(transport.dataBuffer) > transport.offset
    received = bytearray()
    client.settimeout(0.05)
    deadline = time.monotonic() + 10
    while len(received) < len(big) + 5 and time.monotonic() < deadline:
        transport.doWrite()  # what the reactor does when the socket can take more
        try:
            received += client.recv(1 << 20)
        except TimeoutError:
            pass
    assert bytes(received) == big + b"close"

    transport.abortConnection()  # drops what is buffered: nothing more goes out
    transport.write(b"late")
    with pytest.raises(TimeoutError):
        client.recv(100)


async def test_an_open_websocket_keeps_no_copy_of_its_handshake(server, websocket_transport):
    transport, client = websocket_transport
    protocol = transport.protocol
    protocol._raw_query_string = b"next=1"  # Daphne's HTTP side sets it when it hands over
    protocol.dataReceived(upgrade_request("/ws/status/?next=1"))
    assert protocol.http_headers["cookie"] == "sessionid=abc"  # until the application accepts
    protocol.serverAccept()
    assert client.recv(1000).startswith(b"HTTP/1.1 101 Switching Protocols")

    assert protocol.http_headers is None and protocol.http_request_params is None
    assert protocol.http_request_data is None and protocol.http_response_data is None
    assert protocol.request.path == "/ws/status/"  # for Daphne's access log
    assert not hasattr(protocol.request, "headers")
    assert type(protocol.send_queue).__name__ == "_SendQueue"
    # The application's scope still has the headers, once.
    assert (b"cookie", b"sessionid=abc") in protocol.clean_headers
    assert server.connections[protocol]["application_instance"] is not None

    protocol.sendMessage(b'{"type":"status"}')  # the open socket works as before
    assert client.recv(100) == b"\x81\x11" + b'{"type":"status"}'
    protocol.sendData(b"abcdef", chopsize=2)  # trickled out through the send queue
    protocol.sendData(b"gh")  # waits behind it
    received = b""
    deadline = time.monotonic() + 5
    while len(received) < 8 and time.monotonic() < deadline:
        protocol._send()  # what the reactor does next, each time
        received += client.recv(100)
    assert received == b"abcdefgh" and not protocol.send_queue


async def test_the_http_request_that_became_a_websocket_is_let_go(server):
    """Through Daphne's HTTP side, as a browser's upgrade arrives, over a real loopback
    connection: once handed over, the HTTP channel is no longer the connection's producer and
    holds no request, so neither lives as long as the socket."""
    from daphne.http_protocol import HTTPFactory
    from daphne.ws_protocol import WebSocketFactory

    server.http_factory, server.ws_factory = HTTPFactory(server), WebSocketFactory(server)
    with on_loopback(server.http_factory) as (transport, client):
        http_protocol, channel = transport.protocol, transport.producer
        assert type(channel).__name__ == "HTTPChannel"
        http_protocol.dataReceived(upgrade_request())
        websocket = transport.protocol
        assert type(websocket).__name__ == "WebSocketProtocol"
        assert transport.producer is None
        assert channel.requests == []
        channel_ref = weakref.ref(channel)
        del channel, http_protocol
        server.application_checker()  # forgets the request, as it does every second
        gc.collect()
        assert channel_ref() is None

        websocket.serverAccept()  # the socket opens and works as before
        assert client.recv(1000).startswith(b"HTTP/1.1 101 Switching Protocols")
        websocket.sendMessage(b"hi")
        assert client.recv(100) == b"\x81\x02hi"


async def test_a_closed_websocket_is_freed_without_the_collector(server):
    """Opened and closed over a real loopback connection: once Twisted has said the connection is
    lost and Daphne has let go of it, reference counting alone frees the socket and what it held
    (autobahn's `is_closed`, resolved with the socket itself, had made it a cycle)."""
    from daphne.ws_protocol import WebSocketFactory
    from twisted.internet import error
    from twisted.python import failure

    with on_loopback(WebSocketFactory(server, server="Daphne")) as (transport, client):
        protocol = transport.protocol
        protocol._raw_query_string = b""  # Daphne's HTTP side sets it when it hands over
        protocol.dataReceived(upgrade_request())
        protocol.serverAccept()
        assert client.recv(1000).startswith(b"HTTP/1.1 101 Switching Protocols")
        client.close()
        transport.connectionLost(failure.Failure(error.ConnectionDone()))  # as the reactor does
        assert protocol.is_closed.called and protocol.state == protocol.STATE_CLOSED
        server.connections[protocol]["application_instance"].cancel()  # the app ends
        await settle()
        server.application_checker()  # reaps it and forgets the connection, as every second
        assert protocol not in server.connections
        freed = weakref.ref(protocol)
        gc.disable()
        try:
            del protocol
            assert freed() is None
        finally:
            gc.enable()


async def test_its_tables_are_rebuilt_for_what_they_hold_at_the_trim(server, monkeypatch):
    """Fix 13: after a wave of 10,000 connections, Daphne's map of connections, the set of those
    due for the checker, and the reactor's maps of readers and writers are rebuilt, smaller, with
    what they still hold; the checker goes on working on the new ones."""
    from realtime import daphne_fixes

    reactor = types.SimpleNamespace(_readers=emptied({}, keep=2), _writers=emptied({}, keep=0))
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", reactor)
    kept = connect(server, "hangs")
    wave = [connect(server, "finishes") for _ in range(10_000)]
    await settle()
    for protocol in wave:
        server.protocol_disconnected(protocol)
    server.application_checker()  # reaps the wave
    assert list(server.connections) == [kept] and server.live_due == set()
    before = {
        name: (sys.getsizeof(table), table.copy())
        for name, table in [
            ("connections", server.connections),
            ("live_due", server.live_due),
            ("_readers", reactor._readers),
            ("_writers", reactor._writers),
        ]
    }
    daphne_fixes._compact_tables()
    after = {"connections": server.connections, "live_due": server.live_due}
    after["_readers"], after["_writers"] = reactor._readers, reactor._writers
    for name, (size, entries) in before.items():
        assert after[name] == entries, name
        assert sys.getsizeof(after[name]) < size // 20, name
    server.protocol_disconnected(kept)
    server.connections[kept]["application_instance"].cancel()
    await settle()
    server.application_checker()
    assert server.connections == {}


class Timed:
    """Stands in for a protocol under Daphne's timeout checker: records when it was checked."""

    def __init__(self, log: list) -> None:
        self.log = log

    def check_timeouts(self) -> None:
        self.log.append(self)


@pytest.mark.parametrize(("connections", "slices", "size"), [(251, 6, 50), (2000, 20, 100)])
def test_timeout_checks_are_spread_over_the_round_in_slices(server, connections, slices, size):
    """Daphne checked every connection in one call; here each is checked once a round, in slices
    of at least 50 and at most 20 slices, spread evenly over the 2 s (the reactor never runs: the
    scheduled calls are run by hand, in order)."""
    from twisted.internet import reactor

    from realtime.daphne_fixes import CHECK_PERIOD

    checked: list[Timed] = []
    protocols = [Timed(checked) for _ in range(connections)]
    server.connections = {protocol: {} for protocol in protocols}
    before = set(reactor.getDelayedCalls())
    server.timeout_checker()
    scheduled = sorted(set(reactor.getDelayedCalls()) - before, key=lambda call: call.getTime())
    try:
        assert checked == []  # nothing checked in the call itself
        next_round = scheduled.pop()
        assert next_round.func == server.timeout_checker
        calls, now = scheduled, time.time()  # the reactor's clock is wall time
        assert len(calls) == slices
        offsets = [call.getTime() - calls[0].getTime() for call in calls]
        assert offsets == pytest.approx(
            [n * CHECK_PERIOD / slices for n in range(slices)], abs=0.05
        )
        assert next_round.getTime() - now == pytest.approx(CHECK_PERIOD, abs=0.5)
        del server.connections[protocols[-1]]  # gone before its slice: not checked
        for call in calls:
            already = len(checked)
            call.func(*call.args, **call.kw)
            assert len(checked) - already <= size
        assert checked == protocols[:-1]
    finally:
        for call in set(reactor.getDelayedCalls()) - before:
            call.cancel()


async def test_sockets_that_open_together_are_pinged_apart(server):
    """Daphne's first ping was due one interval after the handshake, so sockets that opened
    together were pinged together for as long as they stayed open. Here each socket's first ping
    is due after a random part of the interval: never later than before, spread over all of it,
    and sent by Daphne's own check when due."""
    from daphne.ws_protocol import WebSocketFactory

    interval = server.ping_interval
    due_in = []
    for _ in range(40):  # opened back to back, as after a deploy
        with on_loopback(WebSocketFactory(server, server="Daphne")) as (transport, client):
            protocol = transport.protocol
            protocol._raw_query_string = b""
            protocol.dataReceived(upgrade_request())
            protocol.serverAccept()
            assert client.recv(1000).startswith(b"HTTP/1.1 101 Switching Protocols")
            now = time.time()
            due_in.append(protocol.last_ping + interval - now)

            protocol.check_timeouts()  # not due yet: nothing sent
            client.settimeout(0.05)
            with pytest.raises(TimeoutError):
                client.recv(100)
            protocol.last_ping = now - interval - 0.01  # due: Daphne's check pings
            protocol.check_timeouts()
            client.settimeout(2)
            assert client.recv(100)[:1] == b"\x89"  # a ping frame
            assert protocol.last_ping >= now  # the next one an interval after this one
    assert all(-0.01 <= seconds <= interval + 0.01 for seconds in due_in)
    # 40 uniform draws span less than half the interval with odds of about 4e-11.
    assert max(due_in) - min(due_in) > interval / 2


def form_post(body: bytes, content_type: str) -> bytes:
    head = (
        f"POST /accounts/logout/?next=%2F HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"csrfmiddlewaretoken=abc&next=%2F", "application/x-www-form-urlencoded"),
        (
            b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n'
            + b"x" * 100_000
            + b"\r\n--XyZ--\r\n",
            "multipart/form-data; boundary=XyZ",
        ),
    ],
    ids=["urlencoded", "multipart"],
)
async def test_a_post_body_reaches_the_app_whole_and_unparsed_by_twisted(
    server, body, content_type
):
    """Through Daphne's HTTP side over a real loopback connection: Twisted leaves the body alone
    (its `args` hold the query string only), and the app receives it byte for byte."""
    from daphne.http_protocol import HTTPFactory

    server.http_factory = HTTPFactory(server)
    with on_loopback(server.http_factory) as (transport, _client):
        channel = transport.producer
        transport.protocol.dataReceived(form_post(body, content_type))
        [request] = channel.requests
        assert request.args == {b"next": [b"/"]}
        queue = request.application_queue
        message = queue.get_nowait()
        received = message["body"]
        while message.get("more_body"):
            message = queue.get_nowait()
            received += message["body"]
        assert received == body
