"""The one owner of group names, event types, cookie and session keys, close codes and reasons.

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

# A random per-browser identifier in its own long-lived cookie. It survives logout (which flushes
# the session), so every tab of a browser hears of the next login there, whoever logs in.
BROWSER_COOKIE = "live_browser"
BROWSER_SESSION_KEY = "_live_browser_id"

# Channel-layer event types (app-prefixed; "live.logout" is handled by `live_logout`).
EVENT_LOGOUT = "live.logout"  # {"reason"}: the login ended
EVENT_LOGIN = "live.login"  # {"login_id", "user_id", "username", "expires_at"}: browser logged in
EVENT_EXPIRY = "live.expiry"  # {"expires_at"}: HTTP activity moved the login's expiry
EVENT_SESSIONS = "live.sessions"  # the user's list of logins or their tab counts changed
# {"login_ids", "reason"}: several logins of one user ended at once, sent to the user's tabs
EVENT_LOGINS_ENDED = "live.logins_ended"

# Close codes sent to the browser (4000-4999 is the range RFC 6455 leaves to applications).
CLOSE_LOGGED_OUT = 4001
# RFC 6455's "going away": the server is shutting down (SIGTERM); reconnect with backoff.
CLOSE_GOING_AWAY = 1001
# RFC 6455's "try again later": the database, session store or Redis is unreachable at connect.
CLOSE_TRY_AGAIN = 1013
# Too many open sockets for this login or user (settings.LIVE_MAX_SOCKETS_PER_LOGIN / _USER).
CLOSE_TOO_MANY_SOCKETS = 4029
# RFC 6455 codes for hostile input: a policy violation (too many messages) and a message too big.
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009

# What one socket may send: frames up to MAX_FRAME_BYTES, and messages at RATE_PER_SECOND on
# average with bursts of RATE_BURST (a token bucket). Clients need one ping a few times a minute.
MAX_FRAME_BYTES = 64 * 1024
RATE_PER_SECOND = 10
RATE_BURST = 20

# Why a login ended, as sent in {"type": "logout", "reason": ...}.
REASON_LOGOUT = "logout"
REASON_LOGOUT_EVERYWHERE = "logout_everywhere"
REASON_REVOKED = "revoked"
REASON_PASSWORD_CHANGED = "password_changed"
REASON_DEACTIVATED = "deactivated"
REASON_EXPIRED = "expired"
REASON_SESSION_ENDED = "session_ended"
# Recorded only, never sent: a new login in the same session replaced this one (its sockets are
# moved to the new login by EVENT_LOGIN instead of being closed).
REASON_REPLACED = "replaced"

# Channels accepts ASCII letters, digits, hyphens, underscores and periods, under 100 characters.
_VALID_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,99}$")
_VALID_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")


def new_id() -> str:
    """A fresh login or browser identifier: 128 random bits, URL- and group-name-safe."""
    return secrets.token_urlsafe(16)


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and bool(_VALID_ID.match(value))


def _group(prefix: str, suffix: str) -> str:
    name = prefix + suffix
    if not _VALID_GROUP.match(name):
        raise ValueError(f"not a valid group name: {name!r}")
    return name


def login_group(login_id: str) -> str:
    """Every socket opened with this login."""
    return _group("live.login.", login_id)


def browser_group(browser_id: str) -> str:
    """Every socket of one browser, logged in or not."""
    return _group("live.browser.", browser_id)


def user_tabs_group(user_id: int) -> str:
    """Every logged-in socket of this user: counted for the per-user limit, and told when several
    of the user's logins end at once (one message instead of one per login)."""
    return _group("live.tabs.", str(int(user_id)))


def user_sessions_group(user_id: int) -> str:
    """Sockets of this user's sessions page, watching the list of logins."""
    return _group("live.user.", str(int(user_id)))
