"""The serving benchmark's figures: per-rate rows, the max-rate rule, the 200 req/s row.

Pure apart from :class:`TreeCpu`, which reads the server's process tree with psutil.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from rtrec.serving.loadgen import Request, Run
from rtrec.serving.loadreport import summarize

AT_RATE = 200.0
"""The rate the headline figures are read at."""
THRESHOLDS_MS = (10.0, 5.0)


class Tally:
    """Reads each 2xx /recommend answer: the service's own time and whether (and why)
    it was a fallback. /similar answers carry neither."""

    def __init__(self) -> None:
        self.server_ms: list[float] = []
        self.fallback_reasons: Counter[str] = Counter()
        self.answered = 0
        self.bad_bodies = 0

    def __call__(self, _: int, req: Request, status: str, body: bytes) -> None:
        if not status.isdigit():
            return
        self.answered += 1
        if req.tag != "recommend" or not status.startswith("2"):
            return
        try:
            out = orjson.loads(body)  # the client's loop times other requests meanwhile
            self.server_ms.append(float(out["server_ms"]))
            if out["fallback"]:
                self.fallback_reasons[reason_label(out.get("fallback_reason"))] += 1
        except (ValueError, KeyError, TypeError):
            self.bad_bodies += 1  # a 2xx that is not a recommendation: counted, shown

    def fallbacks(self, recommend_sent: int) -> dict[str, Any]:
        total = sum(self.fallback_reasons.values())
        cold = self.fallback_reasons.get("cold user", 0)
        share = total / recommend_sent if recommend_sent else float("nan")
        return {
            "fallbacks": total,
            "fallback_share": round(share, 4),
            "fallbacks_cold": cold,
            "fallbacks_other": total - cold,
            "fallback_reasons": dict(self.fallback_reasons),
        }


def reason_label(reason: str | None) -> str:
    """``"cold user: no history (served trending items)"`` -> ``"cold user"``."""
    return (reason or "unknown").split(":")[0].split(" (served")[0].strip()


def percentile_or_none(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def rate_row(
    rate: float,
    run: Run,
    duration_s: float,
    tally: Tally,
    *,
    cpu_s: float,
    load_before: float,
    load_after: float,
) -> dict[str, Any]:
    """One offered rate: each endpoint's figures, the server's own p99, fallbacks, CPU."""
    rec = [s for s in run.samples if s.tag == "recommend"]
    sim = [s for s in run.samples if s.tag == "similar"]
    recommend = summarize(rec, duration_s, n_slowest=5, started_unix=run.started_unix)
    recommend["server_p99_ms"] = percentile_or_none(tally.server_ms, 99)
    recommend.update(tally.fallbacks(len(rec)))
    similar = summarize(sim, duration_s, n_slowest=5, started_unix=run.started_unix)
    errors = recommend["errors"] + similar["errors"]
    return {
        "rate_rps": rate,
        "achieved_total_rps": round(len(run.samples) / run.elapsed_s, 1),
        "p99_ms": recommend["p99_ms"],
        "errors": errors,
        "recommend": recommend,
        "similar": similar,
        "answered": tally.answered,
        "non_recommendation_2xx": tally.bad_bodies,
        "cpu_s_per_request": round(cpu_s / tally.answered, 6) if tally.answered else None,
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(load_after, 2),
        "client_stalls": run.client_stalls,
        # The client's own delay in releasing requests (included in every latency above).
        "client_send_lag_p99_ms": percentile_or_none([s.send_lag_s * 1e3 for s in rec], 99),
    }


def holds(row: dict[str, Any], threshold_ms: float) -> bool:
    """A rate holds: /recommend p99 (from due time) at most ``threshold_ms`` and no error
    on either endpoint. A NaN p99 (nothing measured) does not hold."""
    p99 = row["p99_ms"]
    return p99 == p99 and p99 <= threshold_ms and row["errors"] == 0


def max_rps_holding(rows: Sequence[dict[str, Any]], threshold_ms: float) -> float | None:
    """The largest offered rate at which that rate and every lower measured rate held;
    None when the lowest did not. A rate that holds above one that failed does not count
    (a lucky run above a failure is noise, not capacity)."""
    best = None
    for row in sorted(rows, key=lambda r: r["rate_rps"]):
        if not holds(row, threshold_ms):
            break
        best = row["rate_rps"]
    return best


class MissingRate(RuntimeError):
    """The headline rate was not measured: there is no figure to report in its place."""


def row_at(rows: Sequence[dict[str, Any]], rate: float = AT_RATE) -> dict[str, Any]:
    """The row measured at ``rate``; :class:`MissingRate` naming the measured rates if none."""
    for row in rows:
        if row["rate_rps"] == rate:
            return row
    measured = ", ".join(f"{r['rate_rps']:g}" for r in rows) or "none"
    raise MissingRate(f"{rate:g} req/s was not among the measured rates ({measured})")


def headline(rows: Sequence[dict[str, Any]], bare_p99_ms: float) -> dict[str, Any]:
    """The figures read at 200 req/s and the max-rate rules (MissingRate without 200)."""
    at = row_at(rows)
    rec, sim = at["recommend"], at["similar"]
    return {
        "p50_ms_at200": rec["p50_ms"],
        "p95_ms_at200": rec["p95_ms"],
        "p99_ms_at200": rec["p99_ms"],
        "p999_ms_at200": rec["p999_ms"],
        "max_ms_at200": rec["max_ms"],
        "server_p99_ms_at200": rec["server_p99_ms"],
        "client_send_lag_p99_ms_at200": at["client_send_lag_p99_ms"],
        "similar_p99_ms_at200": sim["p99_ms"],
        "errors_at200": at["errors"],
        "statuses_at200": {"recommend": rec["statuses"], "similar": sim["statuses"]},
        "fallbacks_at200": rec["fallbacks"],
        "fallback_share_at200": rec["fallback_share"],
        "fallbacks_cold_at200": rec["fallbacks_cold"],
        "fallbacks_other_at200": rec["fallbacks_other"],
        "cpu_s_per_request_at200": at["cpu_s_per_request"],
        "max_rps_p99_under_10ms": max_rps_holding(rows, 10.0),
        "max_rps_p99_under_5ms": max_rps_holding(rows, 5.0),
        "bare_retrieval_p99_ms": round(bare_p99_ms, 3),
        "service_overhead_ratio_p99": round(rec["p99_ms"] / max(bare_p99_ms, 1e-9), 2),
    }


class TreeCpu:
    """CPU seconds (user + system) used by a process and its descendants since
    :meth:`start`: BentoML's server is a supervisor with worker processes under it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._before: dict[int, float] = {}

    def _read(self) -> dict[int, float]:
        import psutil

        root = psutil.Process(self.pid)
        out = {}
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child that just exited
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        return out

    def start(self) -> None:
        self._before = self._read()

    def seconds(self) -> float:
        """Used since :meth:`start`, by processes alive now (a process that exited in
        between is not counted: under a steady load the service starts none)."""
        now = self._read()
        return sum(t - self._before.get(pid, 0.0) for pid, t in now.items())


def load_avg_1m() -> float:
    return os.getloadavg()[0]
