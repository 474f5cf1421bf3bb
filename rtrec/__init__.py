"""rtrec: what every stage shares — settings, the event contract, errors, the CLI."""

from rtrec.config import Settings, get_settings
from rtrec.errors import ConfigError, InvalidInput, NotFound, RtrecError, Unavailable
from rtrec.events import EventType, Interaction, ItemRecord, UserRecord

__all__ = [
    "ConfigError",
    "EventType",
    "Interaction",
    "InvalidInput",
    "ItemRecord",
    "NotFound",
    "RtrecError",
    "Settings",
    "Unavailable",
    "UserRecord",
    "get_settings",
]

__version__ = "0.1.0"
