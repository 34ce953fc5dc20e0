"""Test settings: the project's own settings with debug's defaults, read from the same environment.

pytest-django turns DEBUG off while tests run, as in production; importing with DJANGO_DEBUG on
only supplies the development secret key and hosts so no test needs secrets of its own.
"""

import os
import tempfile

os.environ.setdefault("DJANGO_DEBUG", "true")

from asgi_project.settings import *  # noqa: F403
from asgi_project.settings import DATABASES

# Live tests run Daphne in subprocesses that must see the test database, so SQLite's test
# database is a file rather than pytest-django's in-memory default.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"live-session-test-{os.getpid()}.sqlite3")
    }

# Tests create many users; the production hasher is deliberately slow.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
