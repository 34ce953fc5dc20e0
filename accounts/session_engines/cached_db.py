"""Django's `cached_db` session engine over this package's `db` engine: its `delete` removes the
row in one `DELETE`, then the cache entry, as Django's does; `load_many` reads many sessions from
the cache in one round trip."""

from django.conf import settings
from django.contrib.sessions.backends import cached_db
from django.core.cache import caches

from accounts.session_engines import db


class SessionStore(cached_db.SessionStore, db.SessionStore):
    @classmethod
    def load_many(cls, stores: list) -> None:
        """These stores' sessions in one `get_many` from the cache: a batch of connecting
        sockets (realtime/auth.py). A session the cache does not hold (or a cache that fails) is
        left to the store's own `load`, which reads the database and fills the cache."""
        waiting = {cls.cache_key_prefix + key: store for key, store in db._unread(stores).items()}
        if not waiting:
            return
        try:
            found = caches[settings.SESSION_CACHE_ALIAS].get_many(list(waiting))
        except Exception:  # as `load` does: the database then
            return
        for key, data in found.items():
            if data is not None:
                for store in waiting[key]:  # each a dict of its own, as from its `load`
                    store._session_cache = dict(data)
