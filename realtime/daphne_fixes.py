"""Thirteen fixes to Daphne 4.2 and the autobahn under it, applied when the app loads (other
servers, uvicorn, need none).

1. Close codes. Daphne closes a socket through autobahn's `sendClose`, which refuses every code
   but 1000 and 3000-4999 (django/daphne#374, crossbario/autobahn-python#1642): a consumer closing
   with 1009 (frame too big), 1008 (flood), 1013 (try again later) or 1001 (going away) raises
   inside Daphne and the client sees 1011 instead. RFC 6455 lets an endpoint send 1001-1003 and
   1007-1014; those are sent here the way autobahn sends its own 1011 (`sendCloseFrame`).
2. Shutdown. On SIGTERM, Daphne cancels every application before the reactor stops, so sockets
   can say goodbye; but `kill_all_applications` raises KeyError on the first connection whose
   application has already finished and been reaped (an idle keep-alive HTTP connection, say),
   and then no socket hears anything: they all drop with 1006. Here it skips those connections.
3. Cost per socket and per frame. For every new socket, autobahn copies its 29 protocol options
   from the factory onto the protocol object and formats them all with `pformat` for a debug log
   line, even when nothing logs at debug level: 7% of the CPU time of a handshake (py-spy) and
   3 KiB per open socket (tracemalloc). Here the options are set once on a protocol class made
   for the factory, so nothing is copied, and the log line is formatted only if it is written.
   The same goes for the coloured names and values of its other debug lines, three of them for
   every frame sent (7% of an idle server's CPU with 10,000 tabs answering pings) and two for every
   socket closed (2% of the CPU of 10,000 tabs closing after a logout).
4. The walk every second. Daphne's `application_checker` visits every connection once a second to
   reap finished applications and close out disconnected ones: with 10,000 idle tabs that walk was
   35% of the server's idle CPU (py-spy). Here a connection is visited only once there is
   something to do: its application has finished, or its client has disconnected (then every
   second until its application is done, as before, to enforce `application_close_timeout`).
   What is done on a visit is Daphne's own logic, unchanged.
5. A queue per socket. Daphne gives each connection's application an `asyncio.Queue` for its
   input: three deques and an `Event`, 3 KiB per idle socket (tracemalloc), for a queue that is
   nearly always empty. A WebSocket's is a `realtime.layers.ChannelQueue` here (its one reader is
   the consumer); HTTP requests keep Daphne's. Fixes 4 and 5 share one copy of Daphne's
   `create_application`, which must be compared with Daphne's on every upgrade.
6. Writes wait for the next poll. Twisted buffers every write and sends it once the event loop
   next reports the socket writable: two `epoll_ctl` calls per message (6% of a logout storm's
   CPU, py-spy), and when a logout reaches 1,000 tabs at once, not one of them is sent before all
   1,000 consumers have run. A WebSocket's connection here sends at once when nothing is waiting
   to be sent before it (as asyncio's transports do), and leaves the rest, if the socket takes
   less than all, to Twisted's buffer. Nagle's algorithm is turned off on these sockets, as
   asyncio does for every TCP socket, so a small write right after another is not held back
   (autobahn means to, but reads its `tcpNoDelay` option before copying it from the factory).
   HTTP connections write as before.
7. The handshake, kept for the socket's life. Once a WebSocket is open, autobahn still holds the
   raw request it parsed, the parsed headers and query, and the response it sent ("for the test
   suite"), and Daphne holds autobahn's request object for its path, which it logs: about 2 KiB
   per idle socket of copies of what the scope's headers already hold. Here they are dropped when
   the socket opens; Daphne keeps the path. Nothing on the server's side reads them later. Its
   send queue, empty unless autobahn trickles a write out in pieces, becomes a list (56 bytes)
   instead of a `deque` (760).
8. The HTTP request that became a WebSocket. Daphne hands the connection over to the WebSocket
   protocol, but Twisted's HTTP channel stays registered as the connection's producer, so the
   channel and its request (headers twice, cookies, arguments, an empty body buffer) live as long
   as the socket: 2.6 KiB of dicts and more per idle socket. Here the channel lets go of the
   connection once it is handed over. (As the producer it paused reading from a client whose
   socket had too much waiting to be written; a WebSocket's protocol never asked for that, and
   the channel layer's capacity bounds what waits for a socket.)
9. The walk every two seconds. Daphne's `timeout_checker` calls every connection's
   `check_timeouts` (its timeouts, and a ping when one is due) in one go every 2 s: 10-26 ms with
   10,000 open sockets, plus about 0.1 ms for each ping due, during which nothing else runs. A
   logout that came in then waited for it.
   Here each round's connections are checked in up to `CHECK_SLICES` slices (of at least
   `CHECK_SLICE_MIN`), spread evenly over the 2 s, so the loop is held for one slice at a time.
   Each connection is still checked once a round, by Daphne's own `check_timeouts`; one that has
   gone before its slice is skipped. Slices cost idle CPU (about 0.9% of a core more at 10,000
   tabs with 20 slices; 2.4% with slices of 50, 200 a round), hence the cap.
10. POST bodies parsed for nothing. Twisted's `Request` parses every POST's form body into
   `request.args` before Daphne sees the request, on the event loop: a multipart body with the
   `email` package, 12 ms per MiB of text and 29 of random bytes (a 5 MiB upload to any URL, even
   one that answers 404, took 156 ms of the server's CPU, 13 ms with this fix, and no socket
   heard anything meanwhile), and an urlencoded one after parsing its `Content-Type` the same way
   (40 µs, every login and logout). Daphne never reads `args`: it hands the raw body to the app,
   which parses it again. Here Daphne's requests are made with Twisted's own switch for it off
   (`parsePOSTFormSubmission`); the query string is still parsed, and the body reaches the app
   as before.
11. Pings in step. Daphne pings a socket once it has been quiet for `--ping-interval` seconds,
   counted from its handshake, so sockets that connected together (every tab reconnecting after a
   deploy, a benchmark's 10,000) are pinged together, in the same check every interval, for as
   long as they stay open: with 10,000 tabs opened in 10 s and a 40 s interval, about 2,000 pings
   were due in the same round, 500 in each of four of its slices (fix 9), and each of those
   slices, with the pongs coming back, held the loop for 20-40 ms; a logout that arrived then
   waited for it (docs/performance.md, "Pings in step, and the collector's pauses shorter").
   Here a socket's first ping comes after a random part of the interval, so the pings of a burst
   are spread evenly over the interval and stay spread (each next ping is an interval after the
   one before, as in Daphne): 500 a round at 10,000 tabs, 25 a slice. No socket waits longer for
   a ping than before.
12. Closed sockets left for the collector. autobahn resolves a socket's `is_closed` Deferred with
   the socket itself, so every closed socket is a reference cycle (socket, its `__dict__`, the
   Deferred), and everything it holds, about 27 objects (its transport, three Deferreds, the
   traffic stats, UTF-8 validator and masker, the input queue), stays until the cyclic garbage
   collector finds it; each closed socket also brought the next collection nearer, and with it a
   pause of the event loop. Here, once the connection is lost, an `is_closed` whose result is
   still the socket is replaced by a Deferred resolved with `None`, and a closed socket is freed
   by reference counting alone (a callback added later gets `None`, not the socket; nothing in
   Daphne adds one).
13. Tables sized for the peak. Daphne's map of connections (and fix 4's set of those due), and
   the Twisted reactor's maps of the sockets it reads and writes, grew to hold every socket of a
   wave and keep that size once they are gone: 1.6 MiB after 10,000 tabs. Here they are rebuilt
   for what they hold when the server trims its memory after a wave (`realtime.memory`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import pprint
import random
import sys
import time
import weakref
from functools import partial

from realtime import memory

logger = logging.getLogger(__name__)

SENDABLE = frozenset({1001, 1002, 1003, *range(1007, 1015)})
CHECK_PERIOD = 2.0  # seconds: Daphne's `timeout_checker` runs this often (fix 9)
CHECK_SLICES = 20  # a round's slices at most: each one wakes the loop
CHECK_SLICE_MIN = 50  # connections in a slice at least


def apply() -> None:
    try:
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
        from twisted.internet import defer
    except ImportError:  # not running under Daphne
        return
    if getattr(WebSocketProtocol.serverClose, "live_fixed", False):
        return
    send_close = WebSocketProtocol.serverClose

    def serverClose(self, code=None):
        if code in SENDABLE:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            send_close(self, code)

    def kill_all_applications(self):
        running = [
            details["application_instance"]
            for details in self.connections.values()
            if details.get("application_instance") is not None
            and not details["application_instance"].done()
        ]
        for application_instance in running:
            application_instance.cancel()
        logger.info("Cancelled %d running application instances", len(running))
        waiting = defer.Deferred.fromFuture(asyncio.gather(*running, return_exceptions=True))
        waiting.addErrback(lambda failure: None)
        return waiting

    serverClose.live_fixed = True
    WebSocketProtocol.serverClose = serverClose
    Server.kill_all_applications = kill_all_applications
    _share_protocol_options()
    _create_applications()
    _check_only_due_connections()
    _write_websockets_at_once()
    _forget_the_handshake()
    _release_upgraded_requests()
    _spread_timeout_checks()
    _leave_bodies_to_the_app()
    _spread_pings()
    _release_closed_sockets()


class _Lazy:
    """`function(*args, **kwargs)` when formatted, and not before."""

    __slots__ = ("args", "function", "kwargs")

    def __init__(self, function, args, kwargs) -> None:
        self.function, self.args, self.kwargs = function, args, kwargs

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __str__(self) -> str:
        return str(self.function(*self.args, **self.kwargs))

    __repr__ = __str__


def _lazy(function):
    return lambda *args, **kwargs: _Lazy(function, args, kwargs)


def _share_protocol_options() -> None:
    from autobahn import util as autobahn_util
    from autobahn.twisted import websocket as autobahn_twisted
    from autobahn.websocket import protocol as autobahn_protocol
    from daphne.ws_protocol import WebSocketFactory

    # Arguments of debug log lines, formatted only if the line is written: the options (pformat)
    # for each new socket, and names and values in colour (hltype, hlval: click.style, three calls
    # for every frame sent, in `sendData`, and two for every socket closed, in `connectionLost`).
    autobahn_protocol.pformat = _lazy(pprint.pformat)
    for module in (autobahn_protocol, autobahn_twisted):
        module.hltype = _lazy(autobahn_util.hltype)
        module.hlval = _lazy(autobahn_util.hlval)
    set_options = WebSocketFactory.setProtocolOptions

    def setProtocolOptions(self, *args, **kwargs):
        set_options(self, *args, **kwargs)
        base = self.protocol
        base = getattr(base, "live_options_of", base)
        options = {name: getattr(self, name) for name in base.CONFIG_ATTRS}
        # A function (perMessageCompressionAccept) must not become a method of the protocol.
        options = {
            name: staticmethod(value) if inspect.isfunction(value) else value
            for name, value in options.items()
        }
        # autobahn copies an option onto the protocol only when the protocol lacks it.
        self.protocol = type(base.__name__, (base,), {**options, "live_options_of": base})

    WebSocketFactory.setProtocolOptions = setProtocolOptions


_servers: weakref.WeakSet = weakref.WeakSet()  # every Daphne server that has had a connection


def _due(server) -> set:
    """The connections the next check visits (fix 4; made on first use: Daphne's __init__ is not
    patched)."""
    try:
        return server.live_due
    except AttributeError:
        server.live_due = set()
        _servers.add(server)
        return server.live_due


@memory.at_trim
def _compact_tables() -> None:
    """Fix 13."""
    for server in _servers:
        server.connections = memory.compacted(server.connections)
        server.live_due = memory.compacted(server.live_due)
    reactor = sys.modules.get("twisted.internet.reactor")  # installed by Daphne, if running
    for name in ("_readers", "_writers"):  # the asyncio reactor's (Daphne's)
        if isinstance(getattr(reactor, name, None), dict):
            setattr(reactor, name, memory.compacted(getattr(reactor, name)))


def _create_applications() -> None:
    from daphne.server import Server

    from realtime.layers import ChannelQueue

    def create_application(self, protocol, scope):
        """Daphne's `create_application`, with a `ChannelQueue` for a WebSocket's input (fix 5)
        and the connection due for the checker once its application ends (fix 4)."""
        assert "application_instance" not in self.connections[protocol]
        websocket = scope.get("type") == "websocket"
        input_queue = ChannelQueue(capacity=None) if websocket else asyncio.Queue()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        instance = asyncio.ensure_future(application_instance, loop=asyncio.get_event_loop())
        self.connections[protocol]["application_instance"] = instance
        instance.add_done_callback(lambda _: _due(self).add(protocol))
        return input_queue

    Server.create_application = create_application


def _check_only_due_connections() -> None:
    from daphne.server import Server
    from twisted.internet import reactor

    daphne_logger = logging.getLogger("daphne.server")
    protocol_disconnected = Server.protocol_disconnected

    def disconnected(self, protocol):
        protocol_disconnected(self, protocol)
        _due(self).add(protocol)

    def check(self, protocol, details) -> None:
        """Daphne's `application_checker`, for one connection."""
        disconnected = details.get("disconnected", None)
        application_instance = details.get("application_instance", None)
        if disconnected and time.time() - disconnected > self.application_close_timeout:
            if application_instance and not application_instance.done():
                daphne_logger.warning(
                    "Application instance %r for connection %s took too long to shut down and "
                    "was killed.",
                    application_instance,
                    repr(protocol),
                )
                application_instance.cancel()
        if application_instance and application_instance.done():
            try:
                exception = application_instance.exception()
            except asyncio.CancelledError:
                pass
            else:
                if exception:
                    if isinstance(exception, KeyboardInterrupt):
                        self.stop()
                    else:
                        daphne_logger.error(
                            "Exception inside application: %s", exception, exc_info=exception
                        )
                        if not disconnected:
                            protocol.handle_exception(exception)
            del details["application_instance"]
            application_instance = None
        if not application_instance and disconnected:
            del self.connections[protocol]

    def application_checker(self):
        pending = _due(self)
        for protocol in list(pending):
            details = self.connections.get(protocol)
            if details is not None:
                check(self, protocol, details)
            # Still due only while disconnected with its application running.
            if protocol not in self.connections or not details.get("disconnected"):
                pending.discard(protocol)
        reactor.callLater(1, self.application_checker)

    Server.protocol_disconnected = disconnected
    Server.application_checker = application_checker


def _write_websockets_at_once() -> None:
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import tcp

    class WriteAtOnce(tcp.Server):
        """A connection that sends a write at once when nothing waits before it (fix 6)."""

        def write(self, data: bytes) -> None:
            waiting = self._tempDataBuffer or len(self.dataBuffer) > self.offset
            closing = self.disconnecting or self._writeDisconnected or self._aborting
            if data and self.connected and not (waiting or closing or self.TLS):
                try:
                    sent = self.socket.send(data)
                except OSError:  # full, or broken: Twisted's write below finds out which
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
            super().write(data)

    connection_made = WebSocketProtocol.connectionMade

    def connectionMade(self):
        if type(self.transport) is tcp.Server:  # plain TCP, not TLS (a wrapping protocol)
            self.transport.__class__ = WriteAtOnce
            self.transport.setTcpNoDelay(True)
        connection_made(self)

    WebSocketProtocol.connectionMade = connectionMade


class _SendQueue(list):
    """autobahn's send queue as a list: all it asks of it is `append`, `popleft` and `len`, and
    it nearly always holds nothing (fix 7)."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


class _OpenedRequest:
    """What Daphne reads of an open WebSocket's handshake request: its path (fix 7)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def _forget_the_handshake() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    on_open = WebSocketProtocol.onOpen

    def onOpen(self):
        on_open(self)
        self.request = _OpenedRequest(self.request.path)
        self.http_headers = self.http_request_params = None
        self.http_request_data = self.http_response_data = None
        if not self.send_queue:
            self.send_queue = _SendQueue()

    WebSocketProtocol.onOpen = onOpen


def _release_upgraded_requests() -> None:
    from daphne.http_protocol import WebRequest

    process = WebRequest.process

    def released_process(self):
        process(self)
        channel = self.channel
        if self.transport is None and channel is not None:  # handed to a WebSocket (fix 8)
            connection = channel.transport
            if connection is not None and connection.producer is channel:
                connection.unregisterProducer()
            channel.requests.clear()

    WebRequest.process = released_process


def _leave_bodies_to_the_app() -> None:
    from daphne.http_protocol import WebRequest

    init = WebRequest.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)  # fix 10
        init(self, *args, **kwargs)

    WebRequest.__init__ = __init__


def _spread_timeout_checks() -> None:
    from daphne.server import Server
    from twisted.internet import reactor

    def check_slice(self, protocols: list) -> None:
        for protocol in protocols:
            if protocol in self.connections:
                protocol.check_timeouts()

    def timeout_checker(self):
        """Daphne's, with the round's connections checked in slices spread over it (fix 9)."""
        protocols = list(self.connections)
        size = max(CHECK_SLICE_MIN, -(-len(protocols) // CHECK_SLICES))
        slices = range(0, len(protocols), size)
        step = CHECK_PERIOD / max(1, len(slices))
        for number, start in enumerate(slices):
            reactor.callLater(number * step, check_slice, self, protocols[start : start + size])
        reactor.callLater(CHECK_PERIOD, self.timeout_checker)

    Server.timeout_checker = timeout_checker


def _spread_pings() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    on_open = WebSocketProtocol.onOpen

    def onOpen(self):
        """Daphne's, with the first ping due after a random part of the interval (fix 11)."""
        on_open(self)
        self.last_ping -= random.random() * self.server.ping_interval

    WebSocketProtocol.onOpen = onOpen


def _release_closed_sockets() -> None:
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import defer
    from twisted.internet.protocol import connectionDone

    connection_lost = WebSocketProtocol.connectionLost

    def connectionLost(self, reason=connectionDone):
        connection_lost(self, reason)
        closed = self.is_closed  # autobahn resolves it with the socket itself
        if closed.called and closed.result is self:
            self.is_closed = defer.succeed(None)

    WebSocketProtocol.connectionLost = connectionLost
