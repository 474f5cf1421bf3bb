"""Shared fixtures: a real embedded stack (Tansu broker + Redis) on free ports.

The stack fixture is session-scoped: one broker and one Redis serve every integration
test, each in a temporary work dir, and both are stopped at the end. ``RTREC_*``
variables are exported so subprocesses (stream processors, BentoML, Airflow) that the
tests start see the same settings.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench._common import cluster_ports, free_port  # noqa: F401  (re-exported for the tests)
from rtrec.config import Settings, get_settings, load_settings
from rtrec.logging import use_redact_salt

# redact_id in this process (unit tests call it without a work dir) uses a fixed salt
# instead of generating one under ~/.rtrec; the services tests start load their own.
use_redact_salt("rtrec-tests")


def restore_env(old: dict[str, str | None]) -> None:
    """Put back the environment variables ``old`` recorded (None: was unset) and drop the
    cached settings built from the changed ones."""
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()


@contextmanager
def settings_env(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``env`` set for the block, the cached settings rebuilt from it; restored after."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield env
    finally:
        restore_env(old)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU tests where torch sees no CUDA device (CI never has one)."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="no CUDA device here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """RTREC_* environment for an isolated embedded stack (not started)."""
    work = tmp_path_factory.mktemp("rtrec-work")
    env = {
        "RTREC_WORK_DIR": str(work),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "RTREC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        "RTREC_SERVING__PORT": str(free_port()),
    }
    with settings_env(env):
        yield env


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Iterator[Settings]:
    """A running embedded stack (real Tansu broker, real Redis), stopped after the session."""
    from rtrec.app import stack as stack_mod

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    settings = load_settings()
    try:
        rows = stack_mod.up(settings)
        bad = [r for r in rows if not r.healthy]
        assert not bad, f"embedded stack unhealthy: {bad}"
        yield settings
    finally:
        stack_mod.down(settings)


@pytest.fixture
def clean_rtrec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RTREC_* variables for this test: the session's stack fixture exports its own,
    and tests of defaults or config files must not see them."""
    for key in [k for k in os.environ if k.startswith("RTREC_")]:
        monkeypatch.delenv(key)
    get_settings.cache_clear()


@pytest.fixture
def work_settings(tmp_path: Path) -> Settings:
    """Settings rooted in a fresh temporary work dir (no services)."""
    return load_settings(work_dir=tmp_path)
