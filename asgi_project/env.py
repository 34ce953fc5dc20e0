"""Read settings from the environment, failing loudly with the variable's name.

Every helper raises ``ImproperlyConfigured`` naming the variable and the value it got, so a typo in
a deployment stops the process at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bad(name: str, value: str, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name}={value!r} is not valid: expected {expected}.")


def _redact(url: str) -> str:
    """The URL with any password replaced, fit for an error message."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable URL>"


def env_str(name: str, default: str | None = None) -> str | None:
    """The raw value, or ``default`` when the variable is unset."""
    return os.environ.get(name, default)


def env_bool(name: str, *, default: bool) -> bool:
    """A boolean written as 1/0, true/false, yes/no or on/off (any case)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _bad(name, raw, "one of 1/0, true/false, yes/no, on/off")


def env_int(name: str, *, default: int, minimum: int = 0, maximum: int = 2**31) -> int:
    """An integer within ``[minimum, maximum]``."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise _bad(name, raw, "an integer") from None
    if not minimum <= value <= maximum:
        raise _bad(name, raw, f"an integer from {minimum} to {maximum}")
    return value


def env_choice(name: str, *, choices: Iterable[str], default: str) -> str:
    """One of a fixed set of words."""
    options = list(choices)
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip()
    if value not in options:
        raise _bad(name, raw, "one of " + ", ".join(options))
    return value


def env_list(name: str, *, default: list[str]) -> list[str]:
    """A comma-separated list; blanks between commas are ignored."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_database(name: str, *, default: str) -> dict:
    """A database URL (``sqlite:///path``, ``postgres://user@host:5432/db``) as Django settings."""
    raw = os.environ.get(name) or default
    try:
        config = dj_database_url.parse(raw, conn_max_age=0)
    except Exception as exc:  # dj-database-url raises several types for a bad URL
        raise _bad(
            name, _redact(raw), f"a URL such as postgres://user@host:5432/db ({exc})"
        ) from None
    if not config.get("NAME"):
        raise _bad(name, _redact(raw), "a database URL that names the database")
    return config


def env_redis_url(name: str) -> str | None:
    """A ``redis://`` or ``rediss://`` URL, or None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise _bad(name, _redact(raw), "a URL starting with redis://, rediss:// or unix://")
    return raw
