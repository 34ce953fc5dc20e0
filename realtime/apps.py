from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"

    def ready(self) -> None:
        from realtime import (
            daphne_fixes,
            signals,  # noqa: F401  (connects the auth signal receivers)
        )

        daphne_fixes.apply()
