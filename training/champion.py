"""The registered champion, loaded: the one way training and monitoring get it.

None is a state (no model registered, no ``champion`` alias); a champion that exists but
cannot be downloaded or loaded is :class:`ChampionUnusable`, so that a caller decides
what it means: the training run stops (its gate would otherwise compare against nothing),
monitoring reports score drift as not judged. An unreachable registry raises
:class:`rtrec.errors.Unavailable` from the registry itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rtrec.config import Settings
from rtrec.errors import Unavailable

if TYPE_CHECKING:
    from rtrec.training.artifacts import ModelBundle


class ChampionUnusable(Unavailable):
    """The ``champion`` alias points at a version whose bundle does not download or load."""

    def __init__(self, version: str, cause: Exception) -> None:
        super().__init__(f"champion v{version} exists but cannot be scored: {cause}")
        self.version = version
        self.cause = cause


def load_champion(
    settings: Settings, *, use_gpu: bool | Literal["auto"] = "auto"
) -> tuple[str, ModelBundle] | None:
    """``(version, bundle)`` of the registered champion; None only when there is none.

    ``use_gpu``: where the bundle's index goes (``rtrec.training.artifacts.load_bundle``).
    """
    from rtrec.training.artifacts import load_bundle
    from rtrec.training.registry import ModelRegistry

    registry = ModelRegistry(settings)
    version = registry.champion_version()
    if version is None:
        return None
    try:
        return version, load_bundle(registry.download_bundle(version), use_gpu=use_gpu)
    except Exception as exc:  # any download or load failure: the champion is unusable
        raise ChampionUnusable(version, exc) from exc
