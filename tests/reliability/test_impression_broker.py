"""The impression log when its broker goes away mid-traffic, over real HTTP: a real
``bentoml serve`` subprocess sending impressions through its child process to a private
Tansu broker, which is stopped under steady traffic and started again. No request may
fail; the impressions of the outage are dropped and counted by reason; once the broker is
back they flow again."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.serving_support import SteadyClient, metric_value, wait_for
from tests.stream_helpers import own_stack

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

SENT = "rtrec_serving_impressions_total"
DROPPED = "rtrec_serving_impressions_dropped_total"


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=5).text


def test_impression_broker_down_mid_traffic_fails_no_request_and_counts_drops(
    tmp_path: Path,
) -> None:
    from rtrec.features import apply
    from rtrec.serving.process import running_server
    from rtrec.serving.synthetic import synthetic_bundle

    from rtrec.app.stack import start_kafka, stop_managed

    bundle = synthetic_bundle(tmp_path / "bundle", n_items=300, seed=5)
    with own_stack(tmp_path) as s:
        apply(s)
        env = {
            "RTREC_WORK_DIR": str(s.work_dir),
            "RTREC_REDIS__URL": s.redis.url,
            "RTREC_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "RTREC_SERVING__BUNDLE_PATH": str(bundle),
            "RTREC_SERVING__API_KEYS": "[]",
        }
        log = tmp_path / "serving.log"
        with running_server(free_port(), env=env, log=log) as srv:
            client = SteadyClient(srv.url, rate=40)
            client.start()
            assert wait_for(lambda: (metric_value(metrics(srv.url), SENT) or 0) >= 20)
            stop_managed(s, "kafka")
            try:
                dropped = lambda: metric_value(  # noqa: E731
                    metrics(srv.url), DROPPED, reason="impression broker down"
                )
                assert wait_for(lambda: (dropped() or 0) >= 20, timeout=30), srv.log_text()[-2000:]
                during = httpx.get(f"{srv.url}/status", timeout=5).json()["degradations"]
            finally:
                start_kafka(s)  # empty: Tansu creates the topic when the producer asks
            sent_before = metric_value(metrics(srv.url), SENT) or 0
            recovered = wait_for(
                lambda: (metric_value(metrics(srv.url), SENT) or 0) >= sent_before + 20,
                timeout=60,
            )
            time.sleep(0.5)
            client.finish()
            children = _children(srv.proc.pid)
    codes = client.statuses()
    assert codes and set(codes) == {200}, f"requests failed while the broker was down: {codes}"
    assert "impression broker down" in during["counts"], during
    assert recovered, "impressions did not flow again once the broker was back"
    assert not [p for p in children if Path(f"/proc/{p}").exists()], "sender outlived the service"


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the BentoML worker and the impression sender)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out
