"""The cluster profile, brought up once for every test in this package.

``rtrec up --profile cluster`` (the CLI, with ``RTREC_CONFIG`` at the profile's settings
file, free ports and a fresh work dir) starts PostgreSQL, the MLflow server, Spark
standalone, Airflow, the Redis Cluster, two stream processors and two serving replicas
behind nginx. Starting them takes a minute or more on two cores, so the package shares one
profile: modules run in name order (``test_1_`` .. ``test_9_``), the ones that stop or kill
a part restore it before they end, and ``test_9_down`` brings the profile down and checks
nothing is left. The fixture's own teardown brings it down again whatever happened, so a
failed test never leaves engines running.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cluster_loop import profile_env
from rtrec.app import cluster
from rtrec.app.cli import main
from rtrec.config import Settings, load_settings
from tests.cluster.support import (
    API_KEYS,
    CLIENT_TIMEOUT_S,
    FIRST_BUNDLE,
    RATE,
    profile_processes,
    wait_replicas_serve,
)
from tests.conftest import settings_env

NEEDS = {
    "redis-server": shutil.which("redis-server"),
    "nginx": shutil.which("nginx") or (Path("/usr/sbin/nginx").is_file() or None),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here starts the cluster profile: mark them so ``-m`` can select them, and
    skip them (saying why) where the system packages the profile runs are missing."""
    missing = [name for name, found in NEEDS.items() if not found]
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        for mark in ("integration", "slow", "cluster"):
            item.add_marker(getattr(pytest.mark, mark))
        item.add_marker(pytest.mark.timeout(1500))
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"needs {missing} (make system-deps)"))


@pytest.fixture(scope="package")
def cluster_env() -> Iterator[dict[str, str]]:
    """Free ports, a fresh work dir (0711, not pytest's 0700 tree: run as root, PostgreSQL
    runs as its own account, which must be able to enter it), a small synthetic model
    bundle to register as the first champion, and the API keys the serving tests use."""
    from rtrec.serving.synthetic import synthetic_bundle

    work = Path(tempfile.mkdtemp(prefix="rtrec-cluster-"))
    os.chmod(work, 0o711)
    synthetic_bundle(work / FIRST_BUNDLE, n_items=400, seed=1)
    env = {
        **profile_env(work),
        "RTREC_CLUSTER__SERVING__CLIENT_TIMEOUT_S": str(CLIENT_TIMEOUT_S),
        "RTREC_SERVING__API_KEYS": json.dumps(API_KEYS),
        "RTREC_SERVING__RATE_LIMIT_PER_S": str(RATE),
    }
    with settings_env(env):
        yield env
    if os.environ.get("RTREC_TEST_KEEP_WORK"):  # the task and replica logs, for a failure
        print(f"cluster work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="package")
def settings(cluster_env: dict[str, str]) -> Iterator[Settings]:
    """The profile, up through the CLI once for the package; brought down at the end even
    if a test failed, and then no process of it may be left."""
    from rtrec.training.dataset import stop_spark
    from rtrec.training.registry import ModelRegistry

    s = load_settings()
    started = time.monotonic()
    out = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    print(f"rtrec up --profile cluster: {time.monotonic() - started:.1f} s\n{out.output}")
    try:
        assert out.exit_code == 0, out.output
        for name in ("postgres", "mlflow-server", "spark", "airflow", "redis-cluster", "nginx"):
            assert f"[ ok ] {name}" in out.output, out.output
        # The replicas follow the registry's champion alias, as deployed: nothing is pinned.
        registry = ModelRegistry(s)
        _, version = registry.log_and_register(
            s.work_dir / FIRST_BUNDLE, params={"source": "synthetic"}, metrics={}
        )
        registry.promote(version, reason="the cluster tests' first champion")
        print(f"replicas serve v{version}: {wait_replicas_serve(s, version)}")
        yield s
    finally:
        stop_spark()
        cluster.down(s)
    left = profile_processes(s)
    assert not left, f"processes of the profile left after down: {left}"
