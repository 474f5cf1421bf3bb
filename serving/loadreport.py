"""Figures of a load run: percentiles, errors by status, the slowest requests' due times,
and :func:`run_rate`, the single-endpoint form of :func:`rtrec.serving.loadgen.run_schedule`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from rtrec.serving.loadgen import Request, Sample, run_schedule


def latency_summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/p99.9 and max in ms (numpy's linear interpolation between order
    statistics; with fewer than 1,000 samples p99.9 lies between the two largest). NaN
    for no samples, so an empty endpoint cannot pass a threshold by accident."""
    if not len(seconds):
        nan = float("nan")
        return {"p50_ms": nan, "p95_ms": nan, "p99_ms": nan, "p999_ms": nan, "max_ms": nan}
    arr = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p95, p99, p999 = np.percentile(arr, [50, 95, 99, 99.9])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "p999_ms": float(p999),
        "max_ms": float(arr.max()),
    }


def slowest(
    samples: Sequence[Sample], n: int = 10, *, started_unix: float | None = None
) -> list[dict[str, float | str]]:
    """The ``n`` slowest requests, slowest first, with their due times: seconds from the
    start and, given the run's wall-clock start, UTC (to match a log line or a pause)."""
    worst = sorted(samples, key=lambda s: s.latency_s, reverse=True)[:n]
    out: list[dict[str, float | str]] = []
    for s in worst:
        row: dict[str, float | str] = {
            "due_s": round(s.due_s, 3),
            "latency_ms": round(s.latency_s * 1000, 3),
            "status": s.status,
            "tag": s.tag,
        }
        if started_unix is not None:
            row["due_utc"] = utc_iso(started_unix + s.due_s)
        out.append(row)
    return out


def utc_iso(unix_s: float) -> str:
    """``2026-12-04T10:15:02.123Z``: the form the service's JSON log lines can be searched by."""
    stamp = datetime.fromtimestamp(unix_s, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def summarize(
    samples: Sequence[Sample],
    duration_s: float,
    *,
    n_slowest: int = 10,
    started_unix: float | None = None,
) -> dict:
    """One endpoint's figures: count, rate, latency percentiles, errors by status, and
    the slowest requests."""
    statuses = Counter(s.status for s in samples)
    errors = sum(c for st, c in statuses.items() if not (st.isdigit() and 200 <= int(st) < 300))
    out: dict = {"sent": len(samples), "offered_rps": round(len(samples) / duration_s, 1)}
    lat = latency_summary_ms([s.latency_s for s in samples])
    out.update({k: round(v, 3) for k, v in lat.items()})
    out.update(
        errors=errors,
        statuses=dict(sorted(statuses.items())),
        slowest=slowest(samples, n_slowest, started_unix=started_unix),
    )
    return out


@dataclass
class RateResult:
    """One endpoint at one rate (the single-endpoint form of :func:`run_schedule`)."""

    rate_rps: float
    sent: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    statuses: dict[str, int] = field(default_factory=dict)
    achieved_rps: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)
    """(due time in s from the start, latency in s) per request: windows of a long run
    (the first and last minute of a soak) are cut from these."""
    slowest: list[dict[str, float | str]] = field(default_factory=list)
    """The slowest requests with their due times (:func:`slowest`)."""
    started_unix: float = 0.0
    client_stalls: list[tuple[float, float]] = field(default_factory=list)

    def row(self) -> dict[str, float | int]:
        tail = ("p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms")
        return {
            "rate_rps": self.rate_rps,
            "sent": self.sent,
            "achieved_rps": round(self.achieved_rps, 1),
            **{k: round(getattr(self, k), 3) for k in tail},
            "errors": self.errors,
        }


def run_rate(
    url: str,
    path: str,
    body_for: Callable[[int], bytes],
    *,
    rate: float,
    duration_s: float,
    connections: int = 32,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    on_response: Callable[[int, str, bytes], None] | None = None,
) -> RateResult:
    """Offer ``rate`` POSTs/s to ``url + path`` for ``duration_s``; every non-2xx is an error."""

    def request_for(i: int) -> Request:
        return Request("POST", path, body_for(i))

    def seen(i: int, _: Request, status: str, body: bytes) -> None:
        if on_response is not None:
            on_response(i, status, body)

    run = run_schedule(
        url,
        request_for,
        rate=rate,
        n=max(1, int(rate * duration_s)),
        connections=connections,
        headers=headers,
        timeout_s=timeout_s,
        on_response=seen,
    )
    s = summarize(run.samples, duration_s, started_unix=run.started_unix)
    figures = (s[k] for k in ("p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "errors"))
    return RateResult(
        rate,
        len(run.samples),
        *figures,
        s["statuses"],
        len(run.samples) / run.elapsed_s,
        samples=[(x.due_s, x.latency_s) for x in run.samples],
        slowest=s["slowest"],
        started_unix=run.started_unix,
        client_stalls=run.client_stalls,
    )
