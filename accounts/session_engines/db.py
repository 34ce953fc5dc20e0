"""Django's `db` session engine, whose `delete` is one `DELETE` (see the package's docstring)."""

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends import db
from django.db import connections, router
from django.utils import timezone


class SessionStore(db.SessionStore):
    @classmethod
    def load_many(cls, stores: list) -> None:
        """Read these stores' sessions in one query, each as its `load` would: a batch of
        connecting sockets (realtime/auth.py). A store read already is left alone; one whose
        session is gone or expired is empty, without a key, as after `load`."""
        waiting = _unread(stores)
        if not waiting:
            return
        model = cls.get_model_class()
        rows = model.objects.filter(session_key__in=waiting, expire_date__gt=timezone.now())
        found = dict(rows.values_list("session_key", "session_data"))
        for key, stores_of_key in waiting.items():
            for store in stores_of_key:
                if key in found:
                    store._session_cache = store.decode(found[key])
                else:
                    store._session_key, store._session_cache = None, {}

    def cycle_key(self):
        """Django's (the data saved under a new key, then the old key deleted), with the login
        that names the old key moved to the new one in between.

        A password change cycles the key (`update_session_auth_hash`), and the login's row
        followed only at the end of the request (accounts/middleware.py): a login watcher that
        checked the session in that gap found it gone and ended a login that lives on
        (`session_ended` to the tabs of the browser that changed its password). Now the row names
        a session that exists at every moment."""
        from accounts.models import Login  # the engine is imported before the apps are ready

        data, old_key = self._session, self.session_key
        self.create()
        self._session_cache = data
        if old_key:
            Login.objects.filter(session_key=old_key, ended_at__isnull=True).update(
                session_key=self.session_key
            )
            self.delete(old_key)

    async def acycle_key(self):
        await sync_to_async(self.cycle_key)()

    def delete(self, session_key=None):
        key = session_key if session_key is not None else self.session_key
        if key is not None:
            delete_rows(self.model, [key])

    async def adelete(self, session_key=None):
        await sync_to_async(self.delete)(session_key)


def _unread(stores: list) -> dict[str, list]:
    """The stores with a key whose session has not been read yet, by key (tabs of one browser
    share a key)."""
    waiting: dict[str, list] = {}
    for store in stores:
        if store.session_key and not hasattr(store, "_session_cache"):
            waiting.setdefault(store.session_key, []).append(store)
    return waiting


def delete_rows(model, session_keys: list[str]) -> None:
    """Delete these sessions' rows in one statement, with no transaction of its own.

    `QuerySet.delete` wraps even a delete of one table's rows in a transaction: under autocommit,
    a `BEGIN` and a `COMMIT` around the `DELETE`, two more round trips to the database."""
    if not session_keys:
        return
    connection = connections[router.db_for_write(model)]
    quote = connection.ops.quote_name
    column = quote(model._meta.get_field("session_key").column)
    placeholders = ", ".join(["%s"] * len(session_keys))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {quote(model._meta.db_table)} WHERE {column} IN ({placeholders})",
            session_keys,
        )
