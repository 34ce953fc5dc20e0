"""Django's `db` and `cached_db` session engines, each deleting a session in one statement and
moving its login to the new key when the key is cycled (`db.SessionStore.cycle_key`).

Django's `db` engine deletes a session by reading its row and then deleting the object: a `SELECT`
and a `DELETE` on every logout, where one `DELETE` does. `DJANGO_SESSION_ENGINE=db` and
`cached_db` choose these (asgi_project/settings.py); everything else is Django's.
"""
