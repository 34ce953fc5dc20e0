"""ASGI entry point: HTTP goes to Django; WebSockets go through the origin check and the auth
stack (Channels' pieces, checking the login in the same trip, in one coroutine) to the consumer."""

import os

from realtime.memory import limit_malloc_arenas

limit_malloc_arenas()  # first, before anything starts a thread (realtime/memory.py)

from asgi_project.http import get_asgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asgi_project.settings")

# Build the Django app first: it sets Django up, and the routing below imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.cache import caches  # noqa: E402

from realtime.memory import tune_gc  # noqa: E402
from realtime.routing import websocket_application  # noqa: E402

tune_gc()
# Django keeps its cache objects per async context, and every socket runs in a context of its own:
# the session lookup at connect made each socket its own cache object (2 KiB, kept while it is
# open). One made here, in the context the server's event loop copies for every socket, is the
# one they all find (the Redis client under it is shared anyway: asgi_project/cache.py).
caches[settings.SESSION_CACHE_ALIAS]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application,
    }
)
