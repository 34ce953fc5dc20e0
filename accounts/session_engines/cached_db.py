"""Django's `cached_db` session engine over this package's `db` engine: its `delete` removes the
row in one `DELETE`, then the cache entry, as Django's does."""

from django.contrib.sessions.backends import cached_db

from accounts.session_engines import db


class SessionStore(cached_db.SessionStore, db.SessionStore):
    pass
