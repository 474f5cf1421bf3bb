"""The BentoML service as a real HTTP server, with a real stream processor behind it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rtrec import stack as stack_mod
from rtrec.config import Settings, load_settings
from rtrec.data import SyntheticConfig, generate
from serving.schemas import EXAMPLE_FEEDBACK, EXAMPLE_RECOMMEND

pytestmark = pytest.mark.integration
KEY, FLOOD_KEY = "test-key-1", "test-key-flood"


def build_bundle(out: Path, data) -> Path:
    """A small real two-tower bundle (no Spark: histories straight from the events)."""
    from training.artifacts import save_bundle
    from training.baselines import MostPopular
    from training.examples import histories_within
    from training.index import build_index
    from training.trainer import TrainConfig, fit

    ev = data.events.merge(
        data.items[["item_id", "categories"]].rename(columns={"categories": "item_categories"}),
        on="item_id",
    )
    frame = histories_within(ev, 20)
    model = fit(frame, TrainConfig(epochs=2, select_best=False, dim=32), progress=False)
    return save_bundle(
        out,
        model=model,
        index=build_index(model.item_embeddings()),
        popular_items=MostPopular(frame).top(100),
    )


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig.small(seed=5, n_users=400, n_items=300, n_events=30_000))


@pytest.fixture(scope="module")
def server(stack: Settings, tmp_path_factory, data):
    """Processor + server on the shared stack; the catalog's events already in the features."""
    from streaming import replay_dataset

    work = tmp_path_factory.mktemp("serving")
    bundle = build_bundle(work / "bundle", data)
    env = {
        "RTREC_SERVING__BUNDLE_PATH": str(bundle),
        "RTREC_SERVING__API_KEYS": f'["{KEY}", "{FLOOD_KEY}"]',
        "RTREC_SERVING__RATE_LIMIT_PER_S": "100",
    }
    os.environ.update(env)
    settings = load_settings()
    from features import apply

    apply(settings)  # once, before two processes race to register it
    replay_dataset(settings, data, progress=False)
    log = (work / "processor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtrec.cli", "stream", "run"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        from serving.cli import start_detached

        start_detached(settings)
        base = f"http://{settings.serving.host}:{settings.serving.port}"
        with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=10) as client:
            _wait_features(client, data, settings)
            yield client, settings
    finally:
        stack_mod.stop_managed(settings, "serving")
        proc.terminate()
        proc.wait(timeout=30)
        for k in env:
            os.environ.pop(k, None)


def _wait_features(client: httpx.Client, data, settings: Settings) -> None:
    """Until the processor has applied every replayed event and the server answers."""
    import redis

    from streaming.processor import offsets_key

    store = redis.Redis.from_url(settings.redis.url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        applied = sum(int(v) + 1 for v in store.hgetall(offsets_key(settings)).values())
        r = client.post("/recommend", json={"user_id": "u0", "k": 5})
        if applied >= len(data.events) and r.status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"processor or server not ready: {r.status_code} {r.text}")


def test_recommend_excludes_seen_and_honours_filters(server, data) -> None:
    client, settings = server
    from features import online_features

    user = str(data.events["user_id"].iloc[-1])
    seen = set(online_features(settings, [user])[0]["recent_items"])
    body = client.post("/recommend", json={"user_id": user, "k": 20}).json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 20 and not seen & set(ids)
    assert body["model_version"] == "local" and body["variant"] == "champion"
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    cats = dict(zip(data.items["item_id"], data.items["categories"], strict=True))
    banned_cat = cats[ids[0]][0]
    filtered = client.post(
        "/recommend",
        json={
            "user_id": user,
            "k": 10,
            "filters": {"exclude_categories": [banned_cat], "exclude_items": ids[1:3]},
        },
    ).json()
    got = [i["item_id"] for i in filtered["items"]]
    assert len(got) == 10 and not set(got) & set(ids[1:3])
    assert all(banned_cat not in cats[i] for i in got)
    only = client.post(
        "/recommend",
        json={"user_id": user, "k": 5, "filters": {"include_categories": [banned_cat]}},
    ).json()
    assert all(banned_cat in cats[i["item_id"]] for i in only["items"])


def test_unknown_user_gets_flagged_fallback(server) -> None:
    client, _ = server
    body = client.post("/recommend", json={"user_id": "never-seen-user", "k": 5}).json()
    assert body["fallback"] is True and "cold user" in body["fallback_reason"]
    assert len(body["items"]) == 5


def test_k_above_catalog_is_clamped(server, data) -> None:
    client, _ = server
    user = str(data.events["user_id"].iloc[0])
    body = client.post("/recommend", json={"user_id": user, "k": 1000}).json()
    assert 0 < len(body["items"]) <= 200  # settings.serving.max_k


def test_click_changes_recommendations(server, data) -> None:
    client, _ = server
    user = str(data.events["user_id"].iloc[-1])
    before = [
        i["item_id"]
        for i in client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]
    ]
    clicked = before[0]
    ts = int(data.events["ts"].max()) + 60_000
    event = {"user_id": user, "item_id": clicked, "event_type": "click", "ts": ts}
    start = time.monotonic()
    assert client.post("/feedback", json={"events": [event]}).status_code == 202
    while time.monotonic() - start < 10:
        after = [
            i["item_id"]
            for i in client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]
        ]
        if after != before:
            break
        time.sleep(0.05)
    assert clicked not in after, "the clicked item is now seen and must be excluded"
    assert after != before


def test_auth_and_rate_limit(server) -> None:
    client, _ = server
    base = str(client.base_url)
    assert httpx.post(f"{base}/recommend", json=EXAMPLE_RECOMMEND).status_code == 401
    assert (
        httpx.post(
            f"{base}/recommend", json=EXAMPLE_RECOMMEND, headers={"X-API-Key": "wrong"}
        ).status_code
        == 401
    )
    from concurrent.futures import ThreadPoolExecutor

    with httpx.Client(base_url=base, headers={"X-API-Key": FLOOD_KEY}) as flood:

        def hit(_: int) -> int:
            return flood.post("/recommend", json=EXAMPLE_RECOMMEND).status_code

        with ThreadPoolExecutor(8) as pool:  # concurrent clients, one key
            codes = list(pool.map(hit, range(400)))
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
    # The other key is not affected by the flood.
    assert client.post("/recommend", json=EXAMPLE_RECOMMEND).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"k": 5}, "body.user_id"),
        ({"user_id": "u1", "k": 0}, "body.k"),
        ({"user_id": "u1", "k": "ten"}, "body.k"),
        ({"user_id": "u1", "filters": {"exclude_items": "i1"}}, "body.filters.exclude_items"),
        ({"user_id": "u1", "colour": "red"}, "body.colour"),
    ],
)
def test_malformed_bodies_get_4xx_naming_the_field(server, body, field) -> None:
    client, _ = server
    r = client.post("/recommend", json=body)
    assert r.status_code == 422 and r.json()["field"] == field


def test_bad_feedback_and_oversized_body(server) -> None:
    client, _ = server
    r = client.post(
        "/feedback",
        json={"events": [{"user_id": "u1", "item_id": "i1", "event_type": "like", "ts": 1}]},
    )
    assert r.status_code == 422 and "event_type" in r.json()["field"]
    assert client.post("/feedback", json=EXAMPLE_FEEDBACK).status_code == 202
    big = {"user_id": "u1", "context": {"x": "y" * 100_000}}
    assert client.post("/recommend", json=big).status_code == 413


def test_similar_items(server, data) -> None:
    client, _ = server
    item = str(data.events["item_id"].value_counts().index[0])
    body = client.get(f"/similar/{item}", params={"k": 5}).json()
    assert len(body["items"]) == 5 and item not in [i["item_id"] for i in body["items"]]
    assert client.get("/similar/no-such-item").status_code == 404


def test_metrics_health_and_openapi(server) -> None:
    client, _ = server
    assert client.get("/readyz").status_code == 200
    text = client.get("/metrics").text
    assert "rtrec_serving_stage_seconds" in text and "rtrec_serving_fallbacks_total" in text
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/similar/{item_id}", "/feedback"} <= set(spec["paths"])


def test_redis_down_gives_flagged_fallback_not_5xx(server, stack, data) -> None:
    """Last in the module: stops and restarts the shared Redis."""
    client, _ = server
    user = str(data.events["user_id"].iloc[-1])
    stack_mod.stop_managed(stack, "redis")
    try:
        r = client.post("/recommend", json={"user_id": user, "k": 5})
        assert r.status_code == 200
        body = r.json()
        assert body["fallback"] is True and "unavailable" in body["fallback_reason"]
        assert len(body["items"]) == 5
    finally:
        stack_mod.start_redis(stack)
