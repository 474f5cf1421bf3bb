"""The serving benchmark's pure parts: the request mix, the max-rate rule, the 200 req/s
row, the percentiles and the open-loop client (against a small local HTTP server)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import Counter

import numpy as np
import pytest
from rtrec.serving.loadgen import Request, Run, Sample, run_schedule
from rtrec.serving.loadreport import latency_summary_ms, summarize

from bench import serving as bench_serving
from bench.serving_mix import (
    KS,
    Population,
    bare_plan,
    category_shares,
    exact_kinds,
    history_lengths,
    make_histories,
    plan_rate,
)
from bench.serving_report import (
    MissingRate,
    Tally,
    TreeCpu,
    headline,
    max_rps_holding,
    rate_row,
    reason_label,
    row_at,
)


def population() -> Population:
    items = [f"i{j}" for j in range(500)]
    cats = {
        item: [f"c{j % 4}"] + ([f"c{(j + 1) % 4}"] if j % 3 == 0 else [])
        for j, item in enumerate(items)
    }
    names, weights = category_shares(cats)
    warm = [f"u{j}" for j in range(50)]
    return Population(warm, ["u50", "u51"], items, names, weights)


def test_exact_kinds_hold_the_proportions_and_are_seeded() -> None:
    kinds = exact_kinds(np.random.default_rng(1), 1000)
    assert Counter(kinds) == {"warm": 800, "cold": 100, "filtered": 100}
    odd = Counter(exact_kinds(np.random.default_rng(1), 7))
    assert odd == {"warm": 5, "cold": 1, "filtered": 1}  # remainders .6 < .7: warm rounds down
    assert exact_kinds(np.random.default_rng(1), 1000) == kinds
    assert exact_kinds(np.random.default_rng(2), 1000) != kinds


def test_plan_mixes_users_filters_k_and_similar() -> None:
    pop = population()
    plan = plan_rate(pop, rate=200, duration_s=5, seed=3)
    kinds = Counter(plan.kinds)
    assert kinds == {"warm": 800, "cold": 100, "filtered": 100, "similar": 100}
    assert plan.total_rate == pytest.approx(220.0)
    bodies = [
        (kind, json.loads(r.body))
        for kind, r in zip(plan.kinds, plan.requests, strict=True)
        if kind != "similar"
    ]
    assert all(b["exclude_seen"] is True and b["k"] in KS for _, b in bodies)
    assert set(Counter(b["k"] for _, b in bodies)) == set(KS)
    for kind, body in bodies:
        if kind == "filtered":
            assert body["user_id"] in pop.warm_users
            assert set(body["filters"]["include_categories"]) <= set(pop.categories)
        elif kind == "warm":
            assert body["user_id"] in pop.warm_users and "filters" not in body
    cold = [b["user_id"] for k, b in bodies if k == "cold"]
    unknown = [u for u in cold if u.startswith("new-")]
    assert 20 < len(unknown) < 80 and len(set(unknown)) == len(unknown)
    assert set(cold) - set(unknown) <= set(pop.known_cold_users)
    similar = [r for r in plan.requests if r.tag == "similar"]
    assert all(r.method == "GET" and r.path.startswith("/similar/i") for r in similar)
    # Every tenth /recommend is followed by a /similar: both span the whole run.
    assert plan.kinds[10] == "similar" and plan.kinds[-1] == "similar"


def test_plan_is_deterministic_given_seed_and_rate() -> None:
    pop = population()
    a = plan_rate(pop, rate=100, duration_s=3, seed=5)
    assert a == plan_rate(pop, rate=100, duration_s=3, seed=5)
    assert a.requests != plan_rate(pop, rate=100, duration_s=3, seed=6).requests
    assert a.requests != plan_rate(pop, rate=200, duration_s=1.5, seed=5).requests


def test_bare_plan_leaves_out_never_seen_users_only() -> None:
    plan = plan_rate(population(), rate=200, duration_s=5, seed=3)
    bare = bare_plan(plan)
    assert not any(b["user_id"].startswith("new-") for _, b in bare)
    assert Counter(k for k, _ in bare)["warm"] == 800
    assert Counter(k for k, _ in bare)["filtered"] == 100


def test_histories_are_skewed_capped_and_seeded() -> None:
    lengths = history_lengths(np.random.default_rng(0), 20_000)
    assert lengths.min() >= 1 and lengths.max() == 200
    assert np.median(lengths) < lengths.mean()  # a long right tail
    assert 0.01 < (lengths == 200).mean() < 0.05
    items = [f"i{j}" for j in range(5000)]
    users = [f"u{j}" for j in range(300)]
    hist = make_histories(users, items, seed=4)
    assert hist == make_histories(users, items, seed=4)
    assert all(len(h) == len(set(h)) and 1 <= len(h) <= 200 for h in hist.values())
    counts = Counter(i for h in hist.values() for i in h)
    assert counts.most_common(1)[0][1] > 20 * np.median(list(counts.values()))  # popular items


def row(rate: float, p99: float, errors: int = 0) -> dict:
    return {"rate_rps": rate, "p99_ms": p99, "errors": errors}


def test_max_rps_needs_every_lower_rate_to_hold() -> None:
    rows = [row(100, 3), row(200, 4), row(300, 7), row(400, 12)]
    assert max_rps_holding(rows, 10.0) == 300
    assert max_rps_holding(rows, 5.0) == 200
    # Non-monotone: 300 fails, 400 holds by luck; 400 does not count.
    bumpy = [row(400, 6), row(100, 3), row(300, 15), row(200, 4)]
    assert max_rps_holding(bumpy, 10.0) == 200
    assert max_rps_holding([row(100, 3), row(200, 4, errors=1), row(300, 4)], 10.0) == 100
    assert max_rps_holding([row(100, 11), row(200, 4)], 10.0) is None
    assert max_rps_holding([row(100, math.nan)], 10.0) is None
    assert max_rps_holding([row(100, 10.0)], 10.0) == 100  # at most the threshold


def test_at200_fails_loudly_without_a_200_row() -> None:
    rows = [row(100, 3), row(300, 4)]
    with pytest.raises(
        MissingRate, match=r"200 req/s was not among the measured rates \(100, 300\)"
    ):
        row_at(rows)
    with pytest.raises(MissingRate):
        headline(rows, bare_p99_ms=1.0)
    assert row_at([*rows, row(200, 5)])["p99_ms"] == 5


def test_rates_without_200_are_refused_and_a_missing_row_exits_non_zero(monkeypatch) -> None:
    with pytest.raises(SystemExit) as refused:
        bench_serving.parse_args(["--rates", "100,300"])
    assert refused.value.code == 2
    assert bench_serving.parse_args(["--rates", "300,200,100"]).rate_list == [100, 200, 300]

    def no_200(_):
        raise MissingRate("200 req/s was not among the measured rates (100)")

    monkeypatch.setattr(bench_serving, "run", no_200)
    with pytest.raises(SystemExit, match="no figures at 200 req/s") as missing:
        bench_serving.main(["--rates", "100,200"])
    assert missing.value.code not in (0, None)


def test_percentiles_include_the_tail_and_nan_for_nothing() -> None:
    s = latency_summary_ms([j / 1000 for j in range(1, 1001)])  # 1..1000 ms
    assert s["p50_ms"] == pytest.approx(500.5)
    assert s["p99_ms"] == pytest.approx(990.01)
    assert s["p999_ms"] == pytest.approx(999.001)
    assert s["max_ms"] == pytest.approx(1000.0)
    assert all(math.isnan(v) for v in latency_summary_ms([]).values())


def test_summary_counts_every_non_2xx_and_names_the_slowest() -> None:
    statuses = ["200"] * 6 + ["204", "503", "timeout", "connection"]
    samples = [
        Sample(j, "recommend", j * 0.1, 0.001 * (j + 1), st) for j, st in enumerate(statuses)
    ]
    out = summarize(samples, 1.0, n_slowest=2, started_unix=0.0)
    assert out["errors"] == 3 and out["sent"] == 10
    assert out["statuses"] == {"200": 6, "204": 1, "503": 1, "connection": 1, "timeout": 1}
    assert [s["due_s"] for s in out["slowest"]] == [0.9, 0.8]
    assert out["slowest"][0]["due_utc"] == "1970-01-01T00:00:00.900Z"


def test_tally_splits_cold_fallbacks_from_other_reasons() -> None:
    tally = Tally()
    rec = Request("POST", "/recommend", b"{}", "recommend")
    answers = [
        {"server_ms": 1.0, "fallback": False},
        {
            "server_ms": 2.0,
            "fallback": True,
            "fallback_reason": "cold user: no history (served trending items)",
        },
        {
            "server_ms": 3.0,
            "fallback": True,
            "fallback_reason": "feature store unavailable: x (served popular items)",
        },
    ]
    for j, body in enumerate(answers):
        tally(j, rec, "200", json.dumps(body).encode())
    tally(9, Request("GET", "/similar/i1", tag="similar"), "200", b'{"items": []}')
    tally(10, rec, "503", b"{}")
    tally(11, rec, "timeout", b"")
    assert tally.answered == 5 and tally.server_ms == [1.0, 2.0, 3.0]
    figures = tally.fallbacks(recommend_sent=10)
    assert figures["fallbacks"] == 2 and figures["fallback_share"] == 0.2
    assert figures["fallbacks_cold"] == 1 and figures["fallbacks_other"] == 1
    assert figures["fallback_reasons"] == {"cold user": 1, "feature store unavailable": 1}
    assert reason_label(None) == "unknown"


def test_rate_row_reads_each_endpoint() -> None:
    samples = [Sample(j, "recommend", j / 100, 0.002, "200") for j in range(100)]
    samples += [
        Sample(100 + j, "similar", j / 10, 0.001, "404" if j == 0 else "200") for j in range(10)
    ]
    tally = Tally()
    tally.answered, tally.server_ms = 110, [1.0] * 100
    out = rate_row(200, Run(samples, 1.0, 0.0), 1.0, tally, cpu_s=0.55, load_before=1, load_after=2)
    assert out["errors"] == 1 and out["recommend"]["errors"] == 0
    assert out["p99_ms"] == pytest.approx(2.0) and out["recommend"]["server_p99_ms"] == 1.0
    assert out["cpu_s_per_request"] == pytest.approx(0.005)
    assert out["similar"]["statuses"] == {"200": 9, "404": 1}


def test_tree_cpu_counts_this_process() -> None:
    import os

    cpu = TreeCpu(os.getpid())
    cpu.start()
    sum(j * j for j in range(2_000_000))
    assert cpu.seconds() > 0


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        line = head.split(b"\r\n", 1)[0].decode()
        length = next(
            (
                int(h.split(b":")[1])
                for h in head.split(b"\r\n")
                if h.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        if "/drop" in line:
            break
        status = "503 Service Unavailable" if "/busy" in line else "200 OK"
        body = json.dumps({"line": line}).encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
    writer.close()


@pytest.fixture
def local_server():
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(_handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"

    async def shutdown() -> None:
        server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def test_open_loop_client_mixes_methods_and_survives_a_dropped_connection(local_server) -> None:
    paths = ["/ok", "/busy", "/drop", "/ok"] * 5
    seen: list[tuple[int, str, str]] = []

    def request_for(i: int) -> Request:
        method, body = ("GET", b"") if i % 2 else ("POST", b'{"a": 1}')
        return Request(method, paths[i], body, "similar" if i % 2 else "recommend")

    run = run_schedule(
        local_server,
        request_for,
        rate=200,
        n=len(paths),
        connections=2,
        on_response=lambda i, req, status, body: seen.append((i, req.path, status)),
    )
    assert [s.index for s in run.samples] == list(range(20))
    by_path = {(p, s.status) for p, s in zip(paths, run.samples, strict=True)}
    assert by_path == {("/ok", "200"), ("/busy", "503"), ("/drop", "connection")}
    assert all(s.latency_s > 0 for s in run.samples)
    # each release is timed from its due time, and the latency includes it
    assert all(0 <= s.send_lag_s < s.latency_s for s in run.samples)
    assert [s.due_s for s in run.samples] == pytest.approx([i / 200 for i in range(20)], abs=1e-6)
    assert len(seen) == 20 and run.elapsed_s >= 19 / 200


def test_demo_bundle_is_the_last_good_copy_or_a_clear_exit(tmp_path) -> None:
    from rtrec.training import METADATA

    with pytest.raises(SystemExit, match=r"no champion bundle at .*last_good/bundle") as missing:
        bench_serving.demo_bundle(tmp_path)
    assert "Downloaded versions" in str(missing.value.code)
    (tmp_path / "models" / "rtrec-v3").mkdir(parents=True)
    with pytest.raises(SystemExit, match="rtrec-v3"):
        bench_serving.demo_bundle(tmp_path)
    bundle = tmp_path / "serving" / "last_good" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / METADATA).write_text("{}")
    assert bench_serving.demo_bundle(tmp_path) == bundle
    assert bench_serving.last_good_version(bundle) is None
    (bundle.parent / "version.json").write_text('{"version": "2", "saved": 0}')
    assert bench_serving.last_good_version(bundle) == "2"


def test_the_floor_service_answers_in_the_services_shape() -> None:
    """The floor validates the service's request model and answers its response model,
    so what it costs the HTTP stack is what the service's answers cost it."""
    from fastapi.testclient import TestClient
    from rtrec.serving.schemas import RecommendResponse, SimilarResponse

    from bench.serving_floor import app

    client = TestClient(app)
    got = client.post("/recommend", json={"user_id": "u1", "k": 50, "exclude_seen": True})
    assert got.status_code == 200
    assert len(RecommendResponse.model_validate(got.json()).items) == 50
    assert client.post("/recommend", json={"user_id": "u1", "k": 0}).status_code == 422
    similar = client.get("/similar/i7", params={"k": 20})
    assert len(SimilarResponse.model_validate(similar.json()).items) == 20
