"""bench/cluster.py's stream bookkeeping: the squeezed event times and when each sent
event was first seen applied (the rebalance-gap figure rests on both)."""

from __future__ import annotations

import time

import numpy as np

from bench.cluster_stream import SQUEEZE_MS, _Progress, _Sent, squeezed_events


def test_squeezed_events_keep_order_and_fit_the_shortest_window() -> None:
    data = squeezed_events(5_000, seed=1)
    ts = data.events["ts"].to_numpy()
    now = int(time.time() * 1000)
    assert ts.max() - ts.min() <= SQUEEZE_MS < 3_600_000  # inside the 1 h count window
    assert ts.max() <= now  # never in the future (the processor dead-letters that)
    from rtrec.data import SyntheticConfig, generate

    original = generate(SyntheticConfig.small(seed=1, n_events=5_000)).events["ts"].to_numpy()
    # a monotone map: every pair of events keeps its order (ties may merge, never swap)
    order = np.argsort(original, kind="stable")
    assert (np.diff(ts[order]) >= 0).all()


def test_applied_at_is_the_first_sample_covering_each_offset() -> None:
    progress = _Progress.__new__(_Progress)
    progress.samples = [
        (1.0, {0: 4}),
        (2.0, {0: 4, 1: 2}),
        (3.0, {0: 9, 1: 2}),
        (4.0, {0: 3, 1: 7}),  # a stale read never moves progress back
    ]
    sent = [_Sent(0, 0, 0.5), _Sent(0, 5, 1.5), _Sent(1, 2, 1.5)]
    sent += [_Sent(1, 6, 3.5), _Sent(1, 8, 3.9)]
    got = progress.applied_at(sent)
    assert got.tolist() == [1.0, 3.0, 2.0, 4.0, np.inf]
