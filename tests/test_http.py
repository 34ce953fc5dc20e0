"""The HTTP handler (asgi_project/http.py): the middleware chain and the view in one trip to a
thread, threads kept between requests, requests still in parallel, and no request left in
reference cycles."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import Counter

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync
from channels.testing import HttpCommunicator
from django.contrib.messages import get_messages
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.http import HttpResponse
from django.urls import path

from asgi_project.http import OneHopASGIHandler

HOST = [(b"host", b"testserver")]
_gates: dict[str, threading.Event] = {}


def _thread_name(request):
    return HttpResponse(threading.current_thread().name)


def _meet(request, mine: str, other: str):
    """Say this request has started, then wait (up to 5 s) for the other one to have started."""
    _gates[mine].set()
    met = _gates[other].wait(5)
    return HttpResponse("met" if met else "alone")


def _user(request):
    list(get_messages(request))
    return HttpResponse(str(request.user))


urlpatterns = [
    path("thread/", _thread_name),
    path("meet/<str:mine>/<str:other>/", _meet),
    path("user/", _user),
]


@pytest.fixture
def test_urls(settings):
    settings.ROOT_URLCONF = __name__


async def _get(handler, url: str) -> dict:
    response = await HttpCommunicator(handler, "GET", url, headers=HOST).get_response(timeout=10)
    assert response["status"] == 200, response
    return response


@pytest.fixture
def async_to_sync_calls(monkeypatch):
    """How often sync code called back into the event loop (a count; asgiref still does it)."""
    calls = []
    real_call = AsyncToSync.__call__

    def counting_call(self, *args, **kwargs):
        calls.append(self)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(AsyncToSync, "__call__", counting_call)
    return calls


@pytest.mark.parametrize(
    ("handler_class", "one_trip"), [(OneHopASGIHandler, True), (ASGIHandler, False)]
)
async def test_the_middleware_and_the_view_run_in_one_trip(
    test_urls, async_to_sync_calls, handler_class, one_trip
):
    """Django's handler came back to the loop from the middleware (LiveLoginMiddleware is
    sync-only, the middleware inside it ran in async mode) and went out again for the view; here
    nothing in the chain calls back into the loop. Django's handler is the check that the count
    sees those trips."""
    await _get(handler_class(), "/thread/")
    assert (len(async_to_sync_calls) == 0) is one_trip


async def test_requests_keep_their_threads(test_urls):
    """One request runs on one thread (signals, middleware, view), and the next request gets the
    same thread back; Django started a new one per request, and another to join it."""
    seen: list[threading.Thread] = []

    def record(**kwargs):
        seen.append(threading.current_thread())

    request_started.connect(record)
    try:
        handler = OneHopASGIHandler()
        names = [(await _get(handler, "/thread/"))["body"].decode() for _ in range(5)]
    finally:
        request_started.disconnect(record)
    assert len(set(seen)) == 1 and seen[0] is not threading.main_thread()
    assert set(names) == {seen[0].name}


async def test_requests_in_progress_run_on_threads_of_their_own(test_urls):
    """Each request waits for the other to start: on one shared thread, neither would."""
    _gates.update(a=threading.Event(), b=threading.Event())
    handler = OneHopASGIHandler()
    first, second = await asyncio.gather(_get(handler, "/meet/a/b/"), _get(handler, "/meet/b/a/"))
    assert first["body"] == second["body"] == b"met"
    assert len(handler.threads.idle) >= 2


@pytest.fixture
def trips_to_threads(monkeypatch):
    """The sync functions that were run through `sync_to_async`: each a trip to a thread."""
    trips = []
    real_call = SyncToAsync.__call__

    async def counting_call(self, *args, **kwargs):
        trips.append(getattr(self.func, "__name__", repr(self.func)))
        return await real_call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counting_call)
    return trips


@pytest.fixture
def started():
    """(sender, path, thread) of each `request_started` signal."""
    seen = []

    def record(sender, scope, **kwargs):
        seen.append((sender, scope["path"], threading.current_thread().name))

    request_started.connect(record)
    yield seen
    request_started.disconnect(record)


async def test_request_started_is_sent_in_the_trip_of_the_view(
    test_urls, trips_to_threads, started
):
    """Two trips: the signal, the chain and the view; then closing the response. Django's handler
    sent `request_started` in a trip of its own before them."""
    communicator = HttpCommunicator(OneHopASGIHandler(), "GET", "/thread/", headers=HOST)
    response = await communicator.get_response(timeout=10)
    await communicator.wait(timeout=5)  # the handler has closed the response too
    assert trips_to_threads == ["_start_and_respond", "close"]
    assert started == [(OneHopASGIHandler, "/thread/", response["body"].decode())]


async def test_other_handlers_still_send_request_started_themselves(test_urls, started):
    OneHopASGIHandler()  # its handler is in place: it must leave every other sender alone
    await _get(ASGIHandler(), "/thread/")
    assert [(sender, path) for sender, path, _ in started] == [(ASGIHandler, "/thread/")]


async def test_a_request_leaves_no_reference_cycles_for_the_collector(test_urls):
    """Served as under Daphne, which says the client is gone once the body is sent: nothing of the
    request (the request, the lazy user, the messages storage, a `RequestAborted` and its
    traceback) is left in a cycle, for the cyclic garbage collector to find."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage, to look at
    try:
        communicator = HttpCommunicator(OneHopASGIHandler(), "GET", "/user/", headers=HOST)
        response = await communicator.get_response(timeout=10)
        await communicator.send_input({"type": "http.disconnect"})  # as Daphne does
        await communicator.wait(timeout=5)
        del communicator
        gc.collect()
        left = Counter(type(thing).__name__ for thing in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
    assert response["body"] == b"AnonymousUser"  # the view saw the user and the messages
    kinds = ("ASGIRequest", "RequestAborted", "SimpleLazyObject", "FallbackStorage", "traceback")
    assert {kind: left[kind] for kind in kinds if left[kind]} == {}
