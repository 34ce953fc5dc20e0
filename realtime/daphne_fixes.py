"""Two fixes to Daphne 4.2, applied when the app loads (other servers, uvicorn, need neither).

1. Close codes. Daphne closes a socket through autobahn's `sendClose`, which refuses every code
   but 1000 and 3000-4999 (django/daphne#374, crossbario/autobahn-python#1642): a consumer closing
   with 1009 (frame too big), 1008 (flood), 1013 (try again later) or 1001 (going away) raises
   inside Daphne and the client sees 1011 instead. RFC 6455 lets an endpoint send 1001-1003 and
   1007-1014; those are sent here the way autobahn sends its own 1011 (`sendCloseFrame`).
2. Shutdown. On SIGTERM, Daphne cancels every application before the reactor stops, so sockets
   can say goodbye; but `kill_all_applications` raises KeyError on the first connection whose
   application has already finished and been reaped (an idle keep-alive HTTP connection, say),
   and then no socket hears anything: they all drop with 1006. Here it skips those connections.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)

SENDABLE = frozenset({1001, 1002, 1003, *range(1007, 1015)})


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
