"""The one owner of group names, event types, session keys, close codes and logout reasons.

Everything that talks to the channel layer or the browser imports these names; nothing formats a
group name or writes a close code inline. ``docs/protocol.md`` documents every value here.
"""

from __future__ import annotations

import re
import secrets

# The random per-login identifier, kept in the session at login. Group names come from it, never
# from the session key: the key is a bearer secret and would sit in Redis keys, and under
# signed_cookies it changes with every write.
LOGIN_ID_SESSION_KEY = "_live_login_id"

# Channel-layer event types (app-prefixed; "live.logout" is handled by `live_logout`).
EVENT_LOGOUT = "live.logout"

# Close codes sent to the browser (4000-4999 is the range RFC 6455 leaves to applications).
CLOSE_LOGGED_OUT = 4001

# Why a login ended, as sent in {"type": "logout", "reason": ...}.
REASON_LOGOUT = "logout"

# Channels accepts ASCII letters, digits, hyphens, underscores and periods, under 100 characters.
_VALID_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,99}$")
_LOGIN_GROUP_PREFIX = "live.login."


def new_login_id() -> str:
    """A fresh identifier for one login: 128 random bits, URL- and group-name-safe."""
    return secrets.token_urlsafe(16)


def login_group(login_id: str) -> str:
    """The group every socket opened with this login joins."""
    name = _LOGIN_GROUP_PREFIX + login_id
    if not _VALID_GROUP.match(name):
        raise ValueError(f"not a valid login identifier: {login_id!r}")
    return name
