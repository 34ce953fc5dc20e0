"""Where WebSockets go: /ws/status/ only, through the origin check and the auth stack."""

from realtime.auth import StatusSocketStack
from realtime.consumers import StatusConsumer

STATUS_PATH = "ws/status/"

websocket_application = StatusSocketStack(StatusConsumer, STATUS_PATH)
