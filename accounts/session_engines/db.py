"""Django's `db` session engine, whose `delete` is one `DELETE` (see the package's docstring)."""

from django.contrib.sessions.backends import db


class SessionStore(db.SessionStore):
    def delete(self, session_key=None):
        key = self._key_to_delete(session_key)
        if key is not None:
            self.model.objects.filter(session_key=key).delete()

    async def adelete(self, session_key=None):
        key = self._key_to_delete(session_key)
        if key is not None:
            await self.model.objects.filter(session_key=key).adelete()

    def _key_to_delete(self, session_key):
        """`session_key`, else this session's key; None when there is neither (nothing to do)."""
        return session_key if session_key is not None else self.session_key
