"""All settings, read from the environment in this one place.

With nothing set, the project runs on its embedded defaults: SQLite and the in-memory channel layer.
``DJANGO_DEBUG`` is off unless set; ``make run`` and the test settings turn it on.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from asgi_project.env import (
    env_bool,
    env_choice,
    env_database,
    env_int,
    env_list,
    env_redis_url,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Core --------------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off.")
    SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"

ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else []
)
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS is required when DJANGO_DEBUG is off.")

# Read here so a bad value fails at start-up; the server commands use it.
PORT = env_int("PORT", default=8000, minimum=1, maximum=65535)

INSTALLED_APPS = [
    "daphne",  # first, so `runserver` is Daphne's ASGI server
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "accounts",
    "realtime",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.LiveLoginMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "asgi_project.urls"
ASGI_APPLICATION = "asgi_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------

DATABASES = {
    "default": env_database("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several Daphne processes may share one SQLite file: wait for locks instead of failing, and
    # take the write lock at BEGIN so two writers never deadlock on an upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool instead of a new connection per request or per connect (most of the cost of an
    # authenticated WebSocket handshake without it; see docs/performance.md).
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 2, "max_size": 8, "timeout": 10}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache and channel layer ------------------------------------------------------------

REDIS_URL = env_redis_url("REDIS_URL")

if REDIS_URL:
    CACHES = {
        # One Redis connection pool per process, not one per socket (asgi_project/cache.py).
        "default": {"BACKEND": "asgi_project.cache.SharedRedisCache", "LOCATION": REDIS_URL}
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "realtime.layers.BlockingPoolRedisChannelLayer",
            "CONFIG": {
                # Two redis-py 8 defaults break Channels (docs/deployment.md): the 5 s socket
                # timeout kills every idle socket (the layer blocks in BZPOPMIN), and a full
                # async pool raises instead of waiting, so bursts of connecting or leaving tabs
                # die with 1011. The pool here waits (up to `timeout` seconds) for a connection.
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": None,
                        "max_connections": 200,
                        "timeout": 30,
                    }
                ],
                # Members older than this leave their groups; open sockets renew theirs every
                # half of it (realtime/watch.py).
                "group_expiry": env_int("CHANNEL_GROUP_EXPIRY", default=86400, minimum=2),
                # Keys in Redis start with this: deployments (or test runs) sharing one Redis
                # keep apart by giving each its own.
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "asgi"),
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Sessions and authentication ---------------------------------------------------------------

SESSION_BACKENDS = {
    "db": "accounts.session_engines.db",
    "cache": "django.contrib.sessions.backends.cache",
    "cached_db": "accounts.session_engines.cached_db",
    "file": "django.contrib.sessions.backends.file",
    "signed_cookies": "django.contrib.sessions.backends.signed_cookies",
}
SESSION_ENGINE = SESSION_BACKENDS[
    env_choice("DJANGO_SESSION_ENGINE", choices=SESSION_BACKENDS, default="db")
]
SESSION_SERIALIZER = "django.contrib.sessions.serializers.JSONSerializer"
SESSION_COOKIE_AGE = 60 * 60 * 24 * 14  # "Keep me signed in": two weeks
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

# Open sockets re-check their login against the session store at least this often (seconds), to
# catch sessions that vanished behind the app's back (row deleted, cache evicted, clearsessions).
LIVE_RECHECK_SECONDS = env_int("LIVE_RECHECK_SECONDS", default=30, minimum=1, maximum=86400)
# Open sockets allowed per login (one browser's session) and per user, across all processes.
LIVE_MAX_SOCKETS_PER_LOGIN = env_int("LIVE_MAX_SOCKETS_PER_LOGIN", default=100, minimum=1)
LIVE_MAX_SOCKETS_PER_USER = env_int("LIVE_MAX_SOCKETS_PER_USER", default=500, minimum=1)

# --- Brute force (django-axes) -------------------------------------------------------------------
# Failed logins count per username (whatever the address) and per client address (whatever the
# username); the 20th failure locks that username or address out, the right password included,
# for the cool-off, after which it is free again: an attacker can delay a user, never lock them out
# for good. Unknown usernames count and lock the same way, so a lockout says nothing about which
# usernames exist. Behind a proxy, Daphne's --proxy-headers makes the client address the real one.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's ModelBackend, reading the user with the login check (accounts/backends.py).
    "accounts.backends.LoginModelBackend",
]
AXES_FAILURE_LIMIT = 20
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_COOLOFF_TIME = timedelta(
    seconds=env_int("LOGIN_COOLOFF_SECONDS", default=900, minimum=1, maximum=86400)
)
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "accounts.throttle.attempted_username"
AXES_DISABLE_ACCESS_LOG = True  # the Login table records every login already
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
AXES_HANDLER = "accounts.throttle.LoginCleanupHandler"  # no clean-up on logout (its docstring)

# --- Content Security Policy (django-csp): everything from this origin, nothing inline ----------
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "base-uri": [NONE],
        "object-src": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- HTTPS (production) ------------------------------------------------------------------------

if not DEBUG:
    # Daphne runs behind a TLS-terminating proxy that sets X-Forwarded-Proto (docs/deployment.md).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 60 * 60 * 24 * 365
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- Static files ------------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG  # serve straight from the apps in development, no collectstatic
WHITENOISE_AUTOREFRESH = DEBUG

# --- I18n and logging --------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"realtime": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
