"""BentoML's OpenTelemetry middleware is skipped for every path unless tracing is on."""

from __future__ import annotations

import pytest
from opentelemetry.util.http import ExcludeList

from rtrec.config import get_settings


@pytest.mark.parametrize("tracing", [False, True])
def test_tracing_config_follows_the_setting(tracing: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_SERVING__TRACING", str(tracing).lower())
    get_settings.cache_clear()
    import rtrec.serving.service as service

    try:
        config = service._tracing()
        if tracing:
            assert config == {}  # BentoML's own tracing configuration applies
        else:
            # The form BentoML hands to the middleware (a list becomes an ExcludeList):
            # every API path is excluded, so no span is built per request.
            excluded = ExcludeList(config["excluded_urls"])
            for path in ("/recommend", "/similar/i1", "/feedback", "/status", "/docs"):
                assert excluded.url_disabled(f"http://127.0.0.1:3000{path}")
    finally:
        get_settings.cache_clear()


def test_the_service_is_declared_with_its_tracing_config() -> None:
    import rtrec.serving.service as service

    assert service.Recommender.config["tracing"] == service._tracing()
