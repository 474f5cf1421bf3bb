"""Training speed and index quality.

    python bench/training.py [--data PATH/TO/ml-100k] [--index-items 1000000]
        [--ranker-data synthetic:small|PATH] [--batch-events 20000]

- ``cpu_examples_per_s`` (and ``gpu_examples_per_s`` where CUDA is present, else null):
  optimizer steps of the two-tower model at batch 8192 on synthetic tensors;
- ``ml100k_epoch_s``: one epoch over ML-100K's training examples on this CPU (with
  ``--data``; histories from the data itself, no Spark);
- ``index_recall@100``: the auto-built IVF index against exact search on clustered
  64-d vectors, with its build time and per-query latency beside exact search;
- ``ranker_fit_s``: the pipeline's second stage (``rtrec.training.ranker_fit``) fitted on
  ``--ranker-data`` cut in time like the product's split (train | validation 10 % |
  gate 10 %), its training states through Feast's historical retrieval; the user stream's
  offline rows are written first, as the stream processor writes them in a replay
  (batches of ``--batch-events`` events, the processor's largest poll: each changed
  user's row after the batch, and its state before its first event of every later hour
  in the batch, ``rtrec.streaming.batch``), by ``rtrec.features.append_offline_rows``;
- ``feast_historical_rows_per_s``: Feast's historical retrieval (duckdb offline store)
  of user stream rows, every user at 8 times across the data, rows of the entity frame
  per second; the ranker fit's own retrieval and how its states compare with the event
  log's are in ``ranker_states``.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


def examples_per_s(device: str, batch: int = 8192, steps: int = 20) -> float:
    from rtrec.training.loss import sampled_softmax_loss
    from rtrec.training.model import TwoTower, TwoTowerConfig

    dev = torch.device(device)
    n_items, n_users = 100_000, 100_000
    net = TwoTower(
        TwoTowerConfig(n_users=n_users, n_items=n_items, n_categories=50, n_dense=16)
    ).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator(device="cpu").manual_seed(0)
    user = torch.randint(1, n_users, (batch,), generator=g).to(dev)
    hist = torch.randint(0, n_items, (batch, 20), generator=g).to(dev)
    dense = torch.randn(batch, 16, generator=g).to(dev)
    item = torch.randint(1, n_items, (batch,), generator=g).to(dev)
    cats = torch.randint(0, 50, (batch, 4), generator=g).to(dev)
    logq = torch.full((batch,), -10.0, device=dev)
    amp = dev.type == "cuda"

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            loss = sampled_softmax_loss(
                net.user_tower(user, hist, dense),
                net.item_tower(item, cats),
                item,
                net.inv_temperature,
                log_q=logq,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if amp:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if amp:
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def ml100k_epoch(path: str) -> float:
    from rtrec.training.examples import histories_within
    from rtrec.training.trainer import TrainConfig, fit

    from rtrec.data import load_dataset

    ds = load_dataset(path)
    frame = histories_within(ds.events.assign(item_categories=None), 20)
    t = time.perf_counter()
    model = fit(frame, TrainConfig(epochs=1, select_best=False), progress=False)
    seconds = time.perf_counter() - t
    assert model.item_embeddings().shape[0] > 0
    return seconds


def index_figures(n: int, dim: int = 64) -> dict:
    import faiss
    from rtrec.training.index import build_index, index_recall

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(1024, dim)).astype(np.float32)
    emb = centers[rng.integers(0, 1024, n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = emb[rng.choice(n, 1000, replace=False)] + 0.1 * rng.normal(size=(1000, dim)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t = time.perf_counter()
    index = build_index(emb, use_gpu=False)
    build_s = time.perf_counter() - t
    recall = index_recall(index, emb, queries, 100)
    exact = faiss.IndexFlatIP(dim)
    exact.add(emb)

    def per_query(search) -> float:
        t = time.perf_counter()
        for q in queries[:200]:
            search(q[None, :], 100)
        return (time.perf_counter() - t) / 200 * 1000

    return {
        "index_kind": index.kind,
        "index_nprobe": index.nprobe,
        "index_items": n,
        "index_recall@100": round(recall, 4),
        "index_build_s": round(build_s, 1),
        "index_query_ms": round(per_query(index.search), 3),
        "exact_query_ms": round(per_query(exact.search), 3),
    }


def offline_user_rows(settings, events, batch_events: int) -> int:
    """The user stream's offline rows as the stream processor writes them in a replay:
    events folded in time order into each user's state (``rtrec.streaming.aggregates``)
    in batches of ``batch_events``; per batch, a user's state before its first event of
    each later hour (``_Fold.between``) and each changed user's row after the batch.
    Returns rows written."""
    from rtrec.features import USER_STREAM_VIEW, append_offline_rows
    from rtrec.streaming.aggregates import UserState, user_feature_row

    states: dict[str, UserState] = {}
    changed: set[str] = set()
    rows: list = []
    written = 0
    cols = [events[c].to_numpy() for c in ("user_id", "item_id", "event_type", "ts")]
    for j, (user, item, etype, ts) in enumerate(zip(*cols, strict=True), start=1):
        user, ts = str(user), int(ts)
        state = states.setdefault(user, UserState())
        if user in changed and state.in_later_hour(ts):
            rows.append(user_feature_row(user, state, int(time.time() * 1000)))
        state.apply(str(item), str(etype), ts)
        changed.add(user)
        if j % batch_events == 0 or j == len(events):
            now = int(time.time() * 1000)
            rows += [user_feature_row(u, states[u], now) for u in changed]
            append_offline_rows(settings, USER_STREAM_VIEW, rows)
            written, changed, rows = written + len(rows), set(), []
    return written


def ranker_figures(data: str, batch_events: int) -> dict:
    """The second stage's fit through Feast, and Feast's historical retrieval rate."""
    import tempfile

    import pandas as pd
    from rtrec.features import apply, historical_user_rows
    from rtrec.training.examples import histories_within
    from rtrec.training.ranker_fit import fit_ranker_stage
    from rtrec.training.selection import Selection
    from rtrec.training.sets import Frames, TrainingSets
    from rtrec.training.trainer import TrainConfig, fit

    from rtrec.config import load_settings
    from rtrec.data import load_dataset

    ds = load_dataset(data)
    events = ds.events.sort_values("ts", kind="stable").reset_index(drop=True)
    cats = dict(zip(ds.items["item_id"], ds.items["categories"], strict=True))
    events["item_categories"] = [list(cats.get(i, [])) for i in events["item_id"]]
    work = Path(tempfile.mkdtemp(prefix="bench-ranker-"))
    # The fit takes Feast's states whatever their agreement with the event log (the
    # product refuses them below ``training.ranker_states_min_agreement``): this times
    # the Feast path, and reports the agreement.
    settings = load_settings(
        work_dir=work,
        feast={"online_store": "sqlite"},
        training={"ranker_states_min_agreement": 0.0},
    )
    apply(settings)
    t = time.perf_counter()
    rows_written = offline_user_rows(settings, events, batch_events)
    write_s = time.perf_counter() - t
    ts = events["ts"].to_numpy()
    cuts = [int(ts[int(len(ts) * 0.8)]), int(ts[int(len(ts) * 0.9)]), int(ts[-1]) + 1]
    parts = [events[ts < cuts[0]], events[(ts >= cuts[0]) & (ts < cuts[1])]]
    frames = Frames(*parts, events[ts >= cuts[1]], events.iloc[:0])
    t = time.perf_counter()
    model = fit(histories_within(parts[0], 20), TrainConfig(epochs=1), progress=False)
    tower_s = time.perf_counter() - t
    sets = TrainingSets(work, "temporal", {}, 20, cut_ts=cuts, source=str(settings.offline_dir))
    selection = Selection("next_item", model, {}, 500.0, {})
    t = time.perf_counter()
    _, info = fit_ranker_stage(settings, sets, frames, selection, model)
    fit_s = time.perf_counter() - t
    users = sorted(events["user_id"].astype(str).unique())
    times = [int(x) for x in pd.Series(ts).quantile([(k + 1) / 9 for k in range(8)])]
    asked_users = [u for _ in times for u in users]
    asked_times = [at for at in times for _ in users]
    t = time.perf_counter()
    got = historical_user_rows(settings, asked_users, asked_times)
    hist_s = time.perf_counter() - t
    return {
        "ranker_data": data,
        "ranker_fit_s": round(fit_s, 1),
        "ranker_rows": info.get("ranker_rows"),
        "ranker_two_tower_fit_s": round(tower_s, 1),
        "ranker_states": info.get("ranker_states"),
        "offline_user_rows": rows_written,
        "offline_rows_write_s": round(write_s, 1),
        "simulated_batch_events": batch_events,
        "feast_historical_rows": len(got),
        "feast_historical_s": round(hist_s, 2),
        "feast_historical_rows_per_s": round(len(got) / hist_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="ML-100K directory for the epoch time")
    ap.add_argument("--index-items", type=int, default=1_000_000)
    ap.add_argument("--ranker-data", default="synthetic:small", help="data for the ranker fit")
    ap.add_argument("--batch-events", type=int, default=20_000)
    args = ap.parse_args()
    out: dict = {"cpu_threads": torch.get_num_threads()}
    out["cpu_examples_per_s"] = round(examples_per_s("cpu", steps=5))
    out["gpu_examples_per_s"] = (
        round(examples_per_s("cuda", steps=50)) if torch.cuda.is_available() else None
    )
    out["ml100k_epoch_s"] = round(ml100k_epoch(args.data), 2) if args.data else None
    out |= index_figures(args.index_items)
    out |= ranker_figures(args.ranker_data, args.batch_events)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
