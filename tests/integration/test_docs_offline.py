"""``/docs`` and ``/redoc`` of the real BentoML service render with no network but loopback.

The service runs as ``rtrec serve`` runs it (API keys on, so the pages and their assets
must be open without one); headless Chromium resolves every host but 127.0.0.1 to
NOTFOUND, as on an air-gapped host, and the rendered DOM must hold the API's operations.
Screenshots are kept under ``test-artifacts/``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rtrec.config import Settings
from tests.conftest import free_port
from tests.integration.test_monitoring_ui import ARTIFACTS, CHROMIUM, FLAGS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]

OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
"""Every name but loopback fails to resolve: a CDN reference could not load."""
OPERATIONS = ("/recommend", "/similar/{item_id}", "/feedback", "/status")


@pytest.fixture(scope="module")
def server(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from rtrec.features import apply
    from rtrec.serving.process import running_server
    from rtrec.serving.synthetic import synthetic_bundle

    bundle = synthetic_bundle(tmp_path_factory.mktemp("bundle") / "b", n_items=200, seed=3)
    apply(stack)
    env = {
        "RTREC_SERVING__BUNDLE_PATH": str(bundle),
        "RTREC_SERVING__API_KEYS": '["docs-test-key"]',
    }
    with running_server(free_port(), env=env, log=stack.log_dir / "serving-docs.log") as srv:
        yield srv.url


def _chromium(url: str, profile: Path, *extra: str) -> str:
    return subprocess.run(
        [CHROMIUM, *FLAGS, *OFFLINE, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout


def test_pages_reference_only_local_assets_open_without_a_key(server: str) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(server + page, timeout=10)
        assert html.status_code == 200, (page, html.text[:300])
        refs = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert refs and all(r.startswith("/") for r in refs), (page, refs)
        for ref in refs:
            asset = httpx.get(server + ref, timeout=10)
            assert asset.status_code == 200 and len(asset.content) > 1000, (ref, asset.status_code)
    assert httpx.get(server + "/status", timeout=10).status_code == 401  # the guard is on


def test_swagger_ui_renders_operations_offline(server: str, tmp_path: Path) -> None:
    dom = _chromium(server + "/docs", tmp_path / "profile", "--dump-dom")
    assert "swagger-ui" in dom, dom[:500]
    for path in OPERATIONS:
        assert f'data-path="{path}"' in dom, f"operation {path} not rendered"
    assert dom.count('class="opblock opblock-') >= len(OPERATIONS)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "api-docs-offline.png"
    _chromium(server + "/docs", tmp_path / "profile", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_redoc_renders_operations_offline(server: str, tmp_path: Path) -> None:
    dom = _chromium(server + "/redoc", tmp_path / "profile", "--dump-dom")
    assert "rtrec recommendations" in dom, dom[:500]
    for path in OPERATIONS:
        assert path in dom, f"operation {path} not rendered"
    assert dom.count('id="operation/') >= len(OPERATIONS), dom.count('id="operation/')
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "api-redoc-offline.png"
    _chromium(server + "/redoc", tmp_path / "profile", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000
