"""Django's `db` session engine, whose `delete` is one `DELETE` (see the package's docstring)."""

from django.contrib.sessions.backends import db


class SessionStore(db.SessionStore):
    def delete(self, session_key=None):
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        self.model.objects.filter(session_key=session_key).delete()

    async def adelete(self, session_key=None):
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        await self.model.objects.filter(session_key=session_key).adelete()
