"""rtrec: what every stage shares — settings, the event contract, errors, logging, data sets.

This package is the kernel: it imports no stage and nothing of the app layer
(``rtrec.app``). Its names are imported lazily (PEP 562), so ``import rtrec.training.model``
on a GPU host with only torch and numpy installed loads neither pydantic nor the settings.
"""

from rtrec.lazy import lazy_exports

_EXPORTS = {
    "Settings": "rtrec.config",
    "get_settings": "rtrec.config",
    "ConfigError": "rtrec.errors",
    "InvalidInput": "rtrec.errors",
    "NotFound": "rtrec.errors",
    "RtrecError": "rtrec.errors",
    "Unavailable": "rtrec.errors",
    "EventType": "rtrec.events",
    "Interaction": "rtrec.events",
    "ItemRecord": "rtrec.events",
    "UserRecord": "rtrec.events",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"
