"""The online-store breaker and the model watcher (registry faked, bundles real)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rtrec.serving.lifecycle import Loaded, ModelWatcher
from rtrec.serving.online import GuardedFeatures
from rtrec.training import INDEX, METADATA, WEIGHTS

from rtrec.config import Settings, load_settings
from rtrec.errors import InvalidInput, NotFound, Unavailable


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(work_dir=tmp_path)
    s.redis.url = "redis://127.0.0.1:9/0"  # nothing listens on the discard port
    return s


def test_breaker_opens_on_failure_and_skips_the_store(settings: Settings) -> None:
    calls: list[list[str]] = []

    def fetch(ids: list[str]) -> list[dict[str, Any]]:
        calls.append(ids)
        raise Unavailable("online store unreachable: refused")

    guarded = GuardedFeatures(settings, fetch)
    with pytest.raises(Unavailable, match="refused"):
        guarded(["u1"])
    assert guarded.down_reason and len(calls) == 1
    with pytest.raises(Unavailable, match="marked down"):
        guarded(["u1"])
    assert len(calls) == 1  # the open breaker answered without calling the store


def test_slow_reads_are_cut_at_the_deadline_and_trip_after_three(settings: Settings) -> None:
    release = threading.Event()
    finished: list[int] = []

    def stuck(ids: list[str]) -> list[dict[str, Any]]:
        release.wait(10)  # a read that hangs until the test lets it go
        finished.append(1)
        return [{}]

    guarded = GuardedFeatures(settings, stuck, timeout_s=0.02)
    try:
        for _ in range(3):
            with pytest.raises(Unavailable, match="exceeded 20 ms"):
                guarded(["u1"])
            assert not finished  # the caller was let go while the read still hung
        assert guarded.down_reason is not None
    finally:
        release.set()


def test_probe_reports_dead_redis_quickly_and_closes_when_back(settings: Settings) -> None:
    import redis  # noqa: F401  (imported first: the bound is on the probe, not an import)

    guarded = GuardedFeatures(settings, lambda ids: [{"ok": True}], probe_interval_s=0.05)
    start = time.perf_counter()
    assert "ping failed" in (guarded.probe() or "")
    assert time.perf_counter() - start < 1.0
    guarded.trip("test outage")
    guarded.probe = lambda: None  # type: ignore[method-assign]
    guarded.start()
    deadline = time.monotonic() + 2
    while guarded.down_reason is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    guarded.stop()
    assert guarded.down_reason is None and guarded(["u1"]) == [{"ok": True}]


class FakeRegistry:
    def __init__(self, bundles: dict[str, Path]) -> None:
        self.bundles = bundles
        self.champion: str | None = None
        self.challenger: str | None = None
        self.down = False

    def champion_version(self) -> str | None:
        if self.down:
            raise Unavailable("MLflow registry is unreachable")
        return self.champion

    def challenger_version(self) -> str | None:
        return self.challenger

    def download_bundle(self, version: str) -> Path:
        if version not in self.bundles:
            raise NotFound(f"no version {version}")
        return self.bundles[version]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rtrec.serving.synthetic import synthetic_bundle

    root = tmp_path_factory.mktemp("bundles")
    good1 = synthetic_bundle(root / "v1", n_items=100, seed=1)
    good2 = synthetic_bundle(root / "v2", n_items=100, seed=2)
    broken = root / "v3"
    shutil.copytree(good2, broken)
    meta = json.loads((broken / METADATA).read_text())
    meta["sha256"][WEIGHTS] = "0" * 64
    (broken / METADATA).write_text(json.dumps(meta))
    return {"1": good1, "2": good2, "3": broken}


def make_watcher(settings: Settings, registry: FakeRegistry) -> tuple[ModelWatcher, dict]:
    served: dict[str, Loaded | None] = {}
    watcher = ModelWatcher(settings, lambda variant, loaded: served.__setitem__(variant, loaded))
    watcher._registry = registry
    return watcher, served


def test_watcher_swaps_refuses_broken_and_keeps_serving(settings: Settings, bundles) -> None:
    registry = FakeRegistry(bundles)
    watcher, served = make_watcher(settings, registry)
    registry.champion = "1"
    watcher.initial_load()
    assert served["champion"].version == "1"
    registry.champion = "3"
    watcher.poll_once()
    assert served["champion"].version == "1" and "3 refused" in watcher.last_error
    watcher.poll_once()  # a refused version is not retried every tick
    registry.champion = "2"
    watcher.poll_once()
    assert served["champion"].version == "2" and watcher.last_error is None
    registry.champion = "9"  # alias at a version whose artifact is missing
    watcher.poll_once()
    assert served["champion"].version == "2" and "9 refused" in watcher.last_error


def test_transient_registry_errors_are_retried(settings: Settings, bundles) -> None:
    registry = FakeRegistry(bundles)
    watcher, served = make_watcher(settings, registry)
    registry.champion, registry.down = "1", True
    with pytest.raises(Unavailable):
        watcher.poll_once()
    registry.down = False
    watcher.poll_once()
    assert served["champion"].version == "1"


def test_last_good_cache_serves_when_the_registry_is_down(settings: Settings, bundles) -> None:
    registry = FakeRegistry(bundles)
    watcher, _ = make_watcher(settings, registry)
    registry.champion = "2"
    watcher.initial_load()
    registry.down = True
    restarted, served = make_watcher(settings, registry)
    restarted.initial_load()
    assert served["champion"].version == "2" and served["champion"].source == "last_good_cache"
    assert "unreachable" in restarted.last_error
    fresh = load_settings(work_dir=settings.work_dir / "elsewhere")
    empty, served_none = make_watcher(fresh, registry)
    empty.initial_load()
    assert served_none == {} and "unreachable" in empty.last_error


def test_challenger_follows_its_alias(settings: Settings, bundles) -> None:
    settings.serving.ab_challenger_share = 0.5
    registry = FakeRegistry(bundles)
    watcher, served = make_watcher(settings, registry)
    registry.champion, registry.challenger = "1", "2"
    watcher.poll_once()
    assert served["challenger"].version == "2"
    registry.challenger = None
    watcher.poll_once()
    assert served["challenger"] is None and served["champion"].version == "1"


def test_broken_bundle_is_refused_by_load(bundles) -> None:
    from rtrec.serving.lifecycle import load_dir

    with pytest.raises(InvalidInput, match="checksum"):
        load_dir(bundles["3"], "3", "test")


def test_loaded_bundles_are_frozen_out_of_the_collector(bundles) -> None:
    import gc

    from rtrec.serving.lifecycle import load_dir

    gc.unfreeze()
    loaded = load_dir(bundles["1"], "1", "test")
    assert gc.get_freeze_count() > 0  # full collections no longer walk the bundle
    assert loaded.version == "1"
    gc.unfreeze()


def test_champion_alias_gone_keeps_serving_and_is_flagged(settings: Settings, bundles) -> None:
    registry = FakeRegistry(bundles)
    watcher, served = make_watcher(settings, registry)
    registry.champion = "1"
    watcher.initial_load()
    registry.champion = None  # the champion's version was deleted: MLflow drops its alias
    watcher.poll_once()
    assert served["champion"].version == "1"
    assert "no champion alias" in watcher.last_error and "serving version 1" in watcher.last_error
    registry.champion = "1"  # alias restored on the served version: the flag clears
    watcher.poll_once()
    assert watcher.last_error is None and served["champion"].version == "1"


def test_empty_registry_at_start_serves_the_cache_or_says_why(settings: Settings, bundles) -> None:
    registry = FakeRegistry(bundles)
    registry.champion = "2"
    make_watcher(settings, registry)[0].initial_load()  # leaves a last-good copy
    registry.champion = None
    restarted, served = make_watcher(settings, registry)
    restarted.initial_load()
    assert served["champion"].source == "last_good_cache" and served["champion"].version == "2"
    assert "no champion alias" in restarted.last_error
    fresh = load_settings(work_dir=settings.work_dir / "empty")
    empty, none_served = make_watcher(fresh, registry)
    empty.initial_load()
    assert none_served == {} and "no champion alias" in empty.last_error


def test_corrupt_cache_is_named_in_the_error(settings: Settings, bundles) -> None:
    registry = FakeRegistry(bundles)
    work = load_settings(work_dir=settings.work_dir / "corrupt-cache")
    registry.champion = "1"
    first, _ = make_watcher(work, registry)
    first.initial_load()
    index = first.cache_dir / "bundle" / INDEX
    index.write_bytes(bytes(b ^ 0xFF for b in index.read_bytes()[:32]) + index.read_bytes()[32:])
    registry.down = True
    restarted, served = make_watcher(work, registry)
    restarted.initial_load()
    assert served == {}
    assert "unreachable" in restarted.last_error and "cache refused" in restarted.last_error
    assert INDEX in restarted.last_error
