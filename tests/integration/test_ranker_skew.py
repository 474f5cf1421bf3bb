"""Training and serving cannot skew on the ranker's features: events go through the real
broker and stream processor into Redis (the online store) and the offline parquet Feast's
duckdb offline store reads; at a moment T the ranker's row of a (user, candidate) served
from the online read equals the training row built from Feast's historical retrieval at
T, after later events have moved the online store on.

Both sides are given the same two-tower query (``TwoTowerSource.queries`` of the state):
the query's dense features are the two-tower's inputs, not the ranker's; what is under
test is the state every ranker feature and every candidate source is computed from.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rtrec.features import RECENT_ITEMS, OnlineReader, online_features
from rtrec.streaming import publish
from rtrec.streaming.processor import StreamProcessor

from rtrec.config import Settings
from rtrec.data import SyntheticConfig, generate
from tests.stream_helpers import isolated

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

N = 40
TT_FEATURES = {"tt_score", "tt_score_gap", "src_two_tower_score"}
"""Scores from float32 dot products: equal to float32 rounding (as in the unit test)."""


def _events() -> tuple[pd.DataFrame, list, int]:
    """Synthetic events in time order with their categories, their keyed JSON, and the
    first position at a new time (the cut T: everything before it is strictly earlier)."""
    data = generate(SyntheticConfig.small(seed=11, n_users=60, n_items=80, n_events=3000))
    events = data.events.reset_index(drop=True)
    cats = dict(zip(data.items["item_id"], data.items["categories"], strict=True))
    events["item_categories"] = [list(cats[i]) for i in events["item_id"]]
    ts = events["ts"].to_numpy()
    cut = int(len(ts) * 0.6)
    while ts[cut - 1] == ts[cut]:
        cut += 1
    return events, list(data.iter_keyed_event_json()), cut


def _served_rows(s: Settings, users: list[str]) -> list[dict]:
    """The users' rows through serving's reader (``OnlineReader``, asyncio Redis)."""
    reader = OnlineReader.for_users(s)
    reader.prepare()

    async def read() -> list[dict]:
        try:
            return await reader.read(users)
        finally:
            await reader.aclose()

    return asyncio.run(read())


@dataclass
class Streamed:
    """The events streamed in two runs around T, and what a request at T read."""

    settings: Settings
    events: pd.DataFrame
    cut: int
    at: int
    users: list[str]
    served_rows: list[dict]

    @property
    def past(self) -> pd.DataFrame:
        return self.events.iloc[: self.cut]

    @property
    def future(self) -> pd.DataFrame:
        return self.events.iloc[self.cut :]


@pytest.fixture(scope="module")
def streamed(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Streamed:
    s = isolated(stack, tmp_path_factory.mktemp("skew"))
    events, pairs, cut = _events()
    at = int(events["ts"].iloc[cut])  # T
    users = sorted(set(events["user_id"].iloc[:cut]) & set(events["user_id"].iloc[cut:]))
    assert len(users) >= 20
    # Up to T through the stream; what a request at T reads; then the rest of the events.
    publish(s, pairs[:cut], progress=False)
    StreamProcessor(s).run(max_idle_s=2)
    served_rows = _served_rows(s, users)
    publish(s, pairs[cut:], progress=False)
    StreamProcessor(s).run(max_idle_s=2)
    later = online_features(s, users)
    assert all(r["last_event_ms"] >= at for r in later)  # every online row moved past T
    return Streamed(s, events, cut, at, users, served_rows)


def _two_tower(past: pd.DataFrame):
    from rtrec.training.examples import histories_within
    from rtrec.training.trainer import TrainConfig, fit

    frame = histories_within(past.reset_index(drop=True), 10)
    return fit(frame, TrainConfig(epochs=1, dim=16, history_len=10, select_best=False))


def test_served_ranker_row_equals_the_training_row_from_historical_retrieval(
    streamed: Streamed, tmp_path: Path
) -> None:
    from rtrec.training.artifacts import load_bundle, save_bundle
    from rtrec.training.index import build_index
    from rtrec.training.pit_states import FeastStates
    from rtrec.training.ranker import Ranker, TwoStage, ranking_rows
    from rtrec.training.ranker_bundle import load_ranker, save_ranker
    from rtrec.training.served_rank import online_state
    from rtrec.training.two_stage import SourceConfig, build_generator

    s, at, users, served_rows = streamed.settings, streamed.at, streamed.users, streamed.served_rows
    past, future = streamed.past, streamed.future

    # Training: states at T from Feast's historical retrieval, the ranker fitted on them.
    feast = FeastStates(s, RECENT_ITEMS)
    hist_rows = _historical(s, users, at)
    assert hist_rows == served_rows  # the raw feature rows: the same row, field by field
    model = _two_tower(past)
    config = SourceConfig.served(RECENT_ITEMS, neighbours=6)
    gen = build_generator(past, model, ease_l2=10.0, per_source=30, config=config)
    rows = ranking_rows(gen, past, future, now=at, n=N, states_at=feast)
    assert feast.rows == len(set(future["user_id"]))  # one retrieval, every label user
    params = {**Ranker().params, "num_threads": 1, "min_data_in_leaf": 5}
    ranker = Ranker(max_rounds=30, patience=10, params=params, grid=({},)).fit(rows)
    directory = tmp_path / "bundle"
    declared = save_ranker(directory, TwoStage(gen, ranker, n=N), model.item_ids, info={})
    save_bundle(
        directory,
        model=model,
        index=build_index(model.item_keys(), use_gpu=False),
        extra={"ranker": declared},
    )
    bundle = load_bundle(directory, use_gpu=False)
    served = load_ranker(bundle)

    compared = 0
    for user, feats in zip(users, served_rows, strict=True):
        # Serving's steps (``rtrec.serving.ranking.rank_candidates``) at time T.
        state = online_state(user, feats, served.sources.p.history_limit)
        hist = bundle.encoders.items.encode(state.items) - 1
        query = gen.sources[0].queries([state])[0]
        k = min(served.search_k(len(hist)), bundle.index.ntotal)
        scores, found = bundle.search_rows(query[None, :], k)
        merged = served.rank(state, hist, query, (scores[0], found[0]), at).merged
        cols = served.columns(merged, state, hist, query, at)
        x = served.matrix(cols, len(merged.pos))
        mine = rows[rows["user_id"] == user]
        assert [bundle.item_ids[p] for p in merged.pos] == list(mine["item_id"]), user
        for j, name in enumerate(served.model.features):
            tol = 2e-5 if name in TT_FEATURES else 1e-9
            want = mine[name].to_numpy(dtype=np.float64)
            np.testing.assert_allclose(x[:, j], want, rtol=tol, atol=tol, err_msg=name)
        compared += len(merged.pos)
    assert compared >= 20 * N // 2


def _historical(s: Settings, users: list[str], at: int) -> list[dict]:
    """The users' rows as of ``at - 1`` ms from Feast's historical retrieval."""
    from rtrec.features import historical_user_rows

    return historical_user_rows(s, users, [at - 1] * len(users))


def test_the_pipelines_ranker_stage_takes_its_states_from_feast_and_says_so(
    streamed: Streamed, tmp_path: Path
) -> None:
    """``fit_ranker_stage`` (the pipeline's second stage) on sets built from the stream's
    offline log: its states come from Feast, its info says so with the rows retrieved and
    how the states compare with the event log's; sets from elsewhere: the event log, said."""
    from rtrec.training.ranker_fit import fit_ranker_stage
    from rtrec.training.selection import Selection
    from rtrec.training.sets import Frames, TrainingSets

    s = streamed.settings.model_copy(deep=True)
    s.training.ranker_max_trees = 20
    empty = streamed.events.iloc[:0]
    frames = Frames(streamed.past, streamed.future, empty, empty)
    model = _two_tower(streamed.past)
    selection = Selection("test", model, {}, 10.0, {})
    label_users = streamed.future["user_id"].nunique()

    def sets(source: Path) -> TrainingSets:
        cuts = [streamed.at, int(streamed.events["ts"].max()) + 1]
        return TrainingSets(tmp_path, "temporal", {}, 10, cut_ts=cuts, source=str(source))

    _, info = fit_ranker_stage(s, sets(s.offline_dir), frames, selection, model)
    states = info["ranker_states"]
    assert states["source"] == "feast_historical", states
    assert states["feast_rows"] == label_users and states["feast_rows_per_s"] > 0
    # Everything before T went through the stream and was flushed before T's later events:
    # every retrieved state is the event log's state at T.
    assert states["agreement"] == {
        "users": label_users,
        "equal_to_event_log": 1.0,
        "no_row_but_history": 0,
    }

    _, info = fit_ranker_stage(s, sets(tmp_path / "elsewhere"), frames, selection, model)
    states = info["ranker_states"]
    assert states["source"] == "event_log" and "not the stream's offline log" in states["reason"]
    assert "feast_rows" not in states


def test_one_batch_across_many_hours_keeps_each_hours_state_for_feast(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A replay: the whole data set (days of events) published at once, so the processor
    folds it in one or two batches. At hour boundaries inside those batches Feast's
    historical retrieval still finds every user's state as of then: the processor keeps
    each user's state before its first event of every later hour for the offline store,
    not only its state after the batch (with which no user had a row before T)."""
    from rtrec.training.pit_states import FeastStates, agreement

    s = isolated(stack, tmp_path_factory.mktemp("replay"))
    events, pairs, _ = _events()
    publish(s, pairs, progress=False)
    processor = StreamProcessor(s)
    processor.run(max_idle_s=2)
    assert processor.total.applied == len(events)
    ts = events["ts"].to_numpy()
    hour = 3_600_000
    users = sorted(events["user_id"].unique())
    for q in (0.3, 0.6, 0.9):
        at = int(np.quantile(ts, q)) // hour * hour
        states = FeastStates(s, RECENT_ITEMS)(users, at)
        agreed = agreement(states, events, at, RECENT_ITEMS)
        assert agreed["equal_to_event_log"] == 1.0, (q, agreed)
        assert (ts < at).sum() > 0 and (ts >= at).sum() > 0
