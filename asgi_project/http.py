"""Django's ASGI handler, with each request's sync work in one trip to a thread that is kept.

- Django's own handler runs the middleware in async mode as far in as each one allows. Here
  `LiveLoginMiddleware` and WhiteNoise's are sync-only, and every `MiddlewareMixin` middleware in
  async mode runs its `process_request` and `process_response` through `sync_to_async`: a logout
  request went from the event loop to its thread and back about ten times. Run in sync mode, as
  under WSGI, the whole chain and the view take one trip.
- Django's handler sends `request_started` in a trip of its own (`Signal.asend` runs sync
  receivers through `sync_to_async`; Django's two, `reset_queries` and `close_old_connections`,
  are sync), before it makes the request. Here the signal is sent at the start of the chain's
  trip, on the same thread, just after the request is made: a logout's tabs heard about 1 ms
  sooner (docs/performance.md). Django's handler still calls `request_started.asend` itself, so
  that one call is skipped for this handler (`_send_request_started_in_the_trip`). A request
  Django cannot make (a 400 before the view) ends without `request_started`; `request_finished`
  still follows its response, as always. Closing the response stays a trip of its own.
- Django gives every request a thread of its own (`ThreadSensitiveContext`): a new thread at the
  request's first sync call, and another to join it at the end, both started from the event loop.
  Here a request borrows an idle single-thread executor (asgiref's
  `ThreadSensitiveContext(executor=...)`) and gives it back at its end: still one request per
  thread at a time, with the threads kept from one request to the next.
- Every request Django's handler served left reference cycles for Python's cyclic garbage
  collector: about 180 objects a request (docs/performance.md, "Requests and closed sockets
  freed without the collector"), each bringing the next collection, a pause of the event loop
  for every open socket, nearer. Once the response has been sent, Daphne says the client is gone
  (`http.disconnect`); Django's `listen_for_disconnect` raised `RequestAborted` for it, which
  Django's handler catches and ignores, and the exception's traceback held the handler's frame,
  with the request and the task holding the exception. Here it returns instead; the handler
  still cancels the view if the client goes first. And the request's own attributes tie it in
  cycles (`request.user` and `request.auser` are closures over the request, the messages storage
  holds it): they are dropped when the response is closed, its last step, after the middleware,
  the view and the response's sending are done with them. Both lean on Django's internals (its
  `listen_for_disconnect`, copied, and the response's `_resource_closers`): compare them with
  Django's on every upgrade; tests/test_http.py fails if either stops working.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.handlers.asgi import ASGIHandler

# Idle request threads kept for the next requests; a burst starts more, and ends those over this.
IDLE_REQUEST_THREADS = 8


class RequestThreads:
    """Single-thread executors, one per request in progress, kept while idle."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.idle: list[ThreadPoolExecutor] = []

    def take(self) -> ThreadPoolExecutor:
        if self.idle:
            return self.idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        """Its request has ended, and so has its work on the thread: asgiref's `sync_to_async`
        waits for the thread even when the request is cancelled (its client gone)."""
        if len(self.idle) < self.keep:
            self.idle.append(executor)
        else:
            executor.shutdown(wait=False)


class OneHopASGIHandler(ASGIHandler):
    threads = RequestThreads(IDLE_REQUEST_THREADS)

    def __init__(self) -> None:
        super().__init__()
        _send_request_started_in_the_trip()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # as Django's
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.threads.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)

    async def listen_for_disconnect(self, receive):
        """Django's, but a disconnect returns instead of raising `RequestAborted`."""
        message = await receive()
        if message["type"] != "http.disconnect":  # never happens (as Django's)
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def get_response_async(self, request):
        return await sync_to_async(self._start_and_respond, thread_sensitive=True)(request)

    def _start_and_respond(self, request):
        signals.request_started.send(sender=self.__class__, scope=request.scope)
        response = self.get_response(request)
        response._resource_closers.append(request.__dict__.clear)  # run by `response.close()`
        return response


def _send_request_started_in_the_trip() -> None:
    """Make `request_started.asend` skip the call from `OneHopASGIHandler.handle` (Django's),
    whose request sends the signal from its thread instead; every other sender is unchanged."""
    signal = signals.request_started
    if getattr(signal.asend, "skips_one_hop", False):
        return
    django_asend = signal.asend

    async def asend(sender, **named):
        if isinstance(sender, type) and issubclass(sender, OneHopASGIHandler):
            return []
        return await django_asend(sender, **named)

    asend.skips_one_hop = True
    signal.asend = asend


def get_asgi_application() -> OneHopASGIHandler:
    """`django.core.asgi.get_asgi_application`, with this handler."""
    django.setup(set_prefix=False)
    return OneHopASGIHandler()
