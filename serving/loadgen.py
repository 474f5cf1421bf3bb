"""Open-loop HTTP load at a fixed offered rate over keep-alive connections.

Request ``i`` is due at ``start + i / rate`` whether or not earlier ones have answered,
and its latency is measured from that due time, so a stalled server shows up in the
percentiles instead of silently lowering the rate (no coordinated omission). The client
is a few lines of asyncio speaking HTTP/1.1 directly: a general client library costs more
CPU per request than the service under test, and both share the same cores.

:func:`run_schedule` offers any mix of requests (each a :class:`Request` with its own
method, path, body and endpoint tag) and returns one :class:`Sample` per request;
:func:`summarize` turns the samples of one tag into percentiles, errors by status and the
slowest requests' due times. :func:`run_rate` is the single-endpoint POST form.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from rtrec.serving.stalls import heartbeat

from rtrec.config import host_port

TIMEOUT = "timeout"
CONNECTION = "connection"
"""Status keys of requests that got no HTTP answer (besides the status codes as strings)."""


@dataclass(frozen=True)
class Request:
    """One request of a schedule; ``tag`` names its endpoint in the results."""

    method: str
    path: str
    body: bytes = b""
    tag: str = "recommend"


@dataclass(frozen=True)
class Run:
    """A schedule's outcome: every request's sample in schedule order, the seconds until
    the last answer, and the wall-clock time (Unix seconds) of the first due time."""

    samples: list[Sample]
    elapsed_s: float
    started_unix: float
    client_stalls: list[tuple[float, float]] = field(default_factory=list)
    """(seconds from the start, lag in s) of each time the client's own loop ran a
    heartbeat over 10 ms late: a latency the server did not cause."""


@dataclass(frozen=True)
class Sample:
    """What happened to one request: ``status`` is the HTTP code as a string, or
    :data:`TIMEOUT` / :data:`CONNECTION` when none came."""

    index: int
    tag: str
    due_s: float
    """Due time, seconds from the start of the run."""
    latency_s: float
    """From the due time to the end of the answer (or of the failure)."""
    status: str

    @property
    def ok(self) -> bool:
        return self.status.isdigit() and 200 <= int(self.status) < 300


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


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


def request_bytes(method: str, path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}{extra}\r\n").encode() + body


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Pool:
    """Keep-alive connections; a slot whose connection broke is ``None`` and is reopened
    by the next request that takes it (a failed reopen is that request's error)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.free: asyncio.Queue[Connection | None] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self.free.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def close(self) -> None:
        while not self.free.empty():
            conn = self.free.get_nowait()
            if conn is not None:
                conn[1].close()


async def _exchange(
    pool: _Pool, req: Request, headers: dict[str, str], timeout_s: float
) -> tuple[str, bytes]:
    """Send ``req`` on a pooled connection; the slot goes back (broken: as ``None``)."""
    conn = await pool.free.get()
    try:
        if conn is None:
            conn = await asyncio.open_connection(pool.host, pool.port)
        reader, writer = conn
        writer.write(request_bytes(req.method, req.path, pool.host, req.body, headers))
        status, body = await asyncio.wait_for(_read_response(reader), timeout_s)
    except TimeoutError:
        _drop(conn)
        pool.free.put_nowait(None)
        return TIMEOUT, b""
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        _drop(conn)
        pool.free.put_nowait(None)
        return CONNECTION, b""
    pool.free.put_nowait(conn)
    return str(status), body


def _drop(conn: Connection | None) -> None:
    if conn is not None:
        conn[1].close()


async def _run(
    host: str,
    port: int,
    request_for: Callable[[int], Request],
    n: int,
    rate: float,
    connections: int,
    headers: dict[str, str],
    timeout_s: float,
    on_response: Callable[[int, Request, str, bytes], None] | None,
) -> Run:
    pool = _Pool(host, port, connections)
    await pool.open()
    samples: list[Sample] = []

    async def one(i: int, req: Request, due: float) -> None:
        status, body = await _exchange(pool, req, headers, timeout_s)
        latency = time.perf_counter() - due
        if on_response is not None:
            on_response(i, req, status, body)
        samples.append(Sample(i, req.tag, due - start, latency, status))

    tasks = []
    start, started_unix = time.perf_counter(), time.time()
    stalls: list[tuple[float, float]] = []
    beat = asyncio.create_task(heartbeat(start, stalls))
    for i in range(n):
        req = request_for(i)  # built before the due time: no client work on the clock
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, req, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    beat.cancel()
    await pool.close()
    samples.sort(key=lambda s: s.index)
    return Run(samples, elapsed, started_unix, stalls)


def run_schedule(
    url: str,
    request_for: Callable[[int], Request],
    *,
    rate: float,
    n: int,
    connections: int = 32,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    on_response: Callable[[int, Request, str, bytes], None] | None = None,
) -> Run:
    """Offer ``request_for(i)`` for i in 0..n-1 at ``rate`` requests/s in all;
    ``on_response(i, request, status, body)`` sees each answer as it comes."""
    host, port = host_port(url, 80)
    return asyncio.run(
        _run(host, port, request_for, n, rate, connections, headers or {}, timeout_s, on_response)
    )


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
