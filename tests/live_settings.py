"""Production settings served over plain HTTP on loopback, for live servers that measure the
project as deployed (tests/test_soak.py).

`DJANGO_DEBUG` is off, so none of its development aids run: Django keeps no log of every query
(with it on, each process holds the last 9,000, which the soak would count as the server's own
memory), templates and errors behave as in production. Only what needs TLS in front is changed:
no HTTPS redirect and no Secure cookies, and static files are served from the apps, so no
`collectstatic` is needed.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "live-test-key-" + "x" * 50)
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")

from asgi_project.settings import *  # noqa: F403
from asgi_project.settings import STORAGES

SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
