"""Model lifecycle: load the champion, watch its alias, swap atomically, keep a last-good copy.

A new version is downloaded, verified (:func:`rtrec.training.artifacts.load_bundle` refuses a
broken bundle), warmed up, and only then swapped in by replacing one reference, so
requests never see a half-loaded model. The last good bundle is copied under the work dir
so the service can start when MLflow is unreachable.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rtrec.serving import metrics
from rtrec.serving.degradation import Degradations
from rtrec.serving.ranking import NO_RANKER, RankerStage, load_stage

from rtrec.config import Settings
from rtrec.errors import RtrecError, Unavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    bundle: Any
    version: str | None
    source: str
    ranker: RankerStage = NO_RANKER
    """The bundle's second stage (``rtrec.serving.ranking``): none, loaded or unavailable."""

    @property
    def status(self) -> dict[str, Any]:
        """What ``/status`` shows of this model."""
        return {"version": self.version, "source": self.source, "ranker": self.ranker.status}


def _warm(bundle: Any) -> None:
    vec = bundle.user_vectors(
        ["warmup"], [bundle.item_ids[:3]], np.zeros((1, len(bundle.dense_names)), np.float32)
    )
    bundle.search(vec, 10)


def load_dir(path: Path, version: str | None, source: str) -> Loaded:
    from rtrec.training import load_bundle

    bundle = load_bundle(path)
    bundle.version = version
    _warm(bundle)
    stage = load_stage(bundle)  # a broken ranker leaves retrieval serving, flagged
    # A 1M-item bundle holds millions of small objects (ids, vocab dicts, category lists);
    # left in the collected generations, every full GC walks them all and stalls requests
    # for hundreds of ms. Freezing moves what exists now out of the collector's sight.
    gc.freeze()
    return Loaded(bundle, version, source, stage)


class ModelWatcher:
    """Polls the registry aliases; calls ``on_load(variant, Loaded)`` for each new version."""

    def __init__(
        self, settings: Settings, on_load: Any, *, degradations: Degradations | None = None
    ) -> None:
        self.settings = settings
        self.on_load = on_load
        self.degradations = degradations or Degradations()
        self.current: dict[str, str | None] = {"champion": None, "challenger": None}
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._registry: Any = None
        self.cache_dir = settings.work_dir / "serving" / "last_good"
        self._alias_missing = False

    # -- start-up ---------------------------------------------------------------------
    def initial_load(self) -> None:
        """Load the champion before the service reports ready.

        Without a champion from the registry (unreachable, or reachable but with no
        ``champion`` alias, e.g. a registry restored empty) the last good copy is served;
        without one of those either the service stays not ready and ``last_error`` says why.
        """
        s = self.settings.serving
        if s.bundle_path is not None:
            self.on_load("champion", load_dir(Path(s.bundle_path), "local", "bundle_path"))
            self.current["champion"] = "local"
            return
        try:
            self.poll_once(raise_errors=True)
        except Exception as exc:  # registry down (or champion refused): try the last good copy
            self._start_from_cache(self.last_error or f"registry unreachable at start: {exc}")
            return
        if self.current["champion"] is None:
            name = self.settings.mlflow.model_name
            self._start_from_cache(f"registry has no champion alias for model {name!r} at start")

    def _start_from_cache(self, reason: str) -> None:
        self.last_error = reason[:300]  # room for the cache's own verdict after it
        metrics.LIFECYCLE_ERRORS.labels("no_champion_at_start").inc()
        logger.error("%s", self.last_error)
        cached = self._cached()
        if cached is not None:
            self.on_load("champion", cached)
            self.current["champion"] = cached.version

    def _cached(self) -> Loaded | None:
        meta = self.cache_dir / "version.json"
        if not meta.exists():
            return None
        try:
            version = json.loads(meta.read_text())["version"]
            return load_dir(self.cache_dir / "bundle", version, "last_good_cache")
        except (RtrecError, ValueError, KeyError) as exc:
            # Say so where operators look (/status), not only in the log: without it a
            # not-ready service would blame the registry alone.
            self.last_error = f"{self.last_error}; last-good cache refused: {exc}"[:500]
            metrics.LIFECYCLE_ERRORS.labels("cache_refused").inc()
            logger.error("cached bundle unusable: %s", exc)
            return None

    def remember(self, path: Path, version: str) -> None:
        """Keep ``path`` as the last good bundle (swapped in whole, never half-written)."""
        tmp = self.cache_dir.with_name("last_good.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path, tmp / "bundle")
        (tmp / "version.json").write_text(json.dumps({"version": version, "saved": time.time()}))
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        tmp.rename(self.cache_dir)

    # -- watching -----------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.serving.bundle_path is None:
            threading.Thread(target=self._loop, name="model-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.serving.watch_interval_s):
            try:
                self.poll_once()
            except Exception as exc:  # keep serving what we have; report why
                self.last_error = str(exc)
                self.degradations.record(
                    "model watch failed",
                    f"still serving {self.current}: {exc}",
                    metric=metrics.DEGRADATIONS,
                )

    def poll_once(self, *, raise_errors: bool = False) -> None:
        """Load each alias whose version changed; refuse (and remember) broken versions.

        Registry or network trouble raises (the loop retries on the next tick); a version
        whose artifact is missing or fails verification is refused once and not retried.
        """
        if self._registry is None:
            from rtrec.training import ModelRegistry

            self._registry = ModelRegistry(self.settings)
        registry = self._registry
        wanted = {"champion": registry.champion_version()}
        if self.settings.serving.ab_challenger_share > 0 or self.settings.serving.shadow:
            wanted["challenger"] = registry.challenger_version()
        for variant, version in wanted.items():
            if version == self.current.get(variant):
                if variant == "champion" and self._alias_missing:
                    self._alias_back()
                continue
            if version is None:
                # Challenger alias removed: stop splitting traffic. A missing champion
                # alias keeps the loaded champion serving (never go unready on a typo or
                # a deleted version) but is flagged: /status says what is being served.
                if variant == "challenger":
                    self.on_load(variant, None)
                    self.current[variant] = None
                elif self.current.get(variant) is not None:
                    self._flag_alias_missing()
                continue
            try:
                path = registry.download_bundle(version)
                loaded = load_dir(Path(path), str(version), "registry")
            except Unavailable:
                raise  # transient (registry or store down): retried on the next poll
            except Exception as exc:
                # A broken artifact is refused; the previous model keeps serving.
                self.last_error = f"{variant} version {version} refused: {exc}"[:500]
                metrics.LIFECYCLE_ERRORS.labels("refused").inc()
                logger.error("%s", self.last_error)
                self.current[variant] = version  # do not retry the same broken version
                if raise_errors and variant == "champion":
                    raise
                continue
            self.on_load(variant, loaded)
            self.current[variant] = version
            self.last_error = None
            if variant == "champion":
                self._alias_missing = False
                self.remember(Path(path), str(version))
            logger.info("model swapped", extra={"variant": variant, "model_version": version})

    def _flag_alias_missing(self) -> None:
        name = self.settings.mlflow.model_name
        served = self.current["champion"]
        self.last_error = (
            f"registry has no champion alias for model {name!r} (its version deleted?); "
            f"still serving version {served}"
        )
        if not self._alias_missing:
            self._alias_missing = True
            metrics.LIFECYCLE_ERRORS.labels("champion_alias_missing").inc()
            logger.error("%s", self.last_error)

    def _alias_back(self) -> None:
        self._alias_missing = False
        if self.last_error and self.last_error.startswith("registry has no champion alias"):
            self.last_error = None
        logger.info("champion alias points at the served version again")
