"""Django's `db` session engine, whose `delete` is one `DELETE` (see the package's docstring)."""

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends import db
from django.db import connections, router


class SessionStore(db.SessionStore):
    def delete(self, session_key=None):
        key = session_key if session_key is not None else self.session_key
        if key is not None:
            delete_rows(self.model, [key])

    async def adelete(self, session_key=None):
        await sync_to_async(self.delete)(session_key)


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
