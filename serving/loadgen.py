"""Open-loop HTTP load at a fixed offered rate over keep-alive connections.

Request ``i`` is due at ``start + i / rate`` whether or not earlier ones have answered,
and its latency is measured from that due time, so a stalled server shows up in the
percentiles instead of silently lowering the rate (no coordinated omission). The client
is a few lines of asyncio speaking HTTP/1.1 directly: a general client library costs more
CPU per request than the service under test, and both share the same two cores.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rtrec.config import host_port


@dataclass
class RateResult:
    rate_rps: float
    sent: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    statuses: dict[int, int] = field(default_factory=dict)
    achieved_rps: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)
    """(due time in s from the start, latency in s) per request: windows of a long run
    (the first and last minute of a soak) are cut from these."""

    def row(self) -> dict[str, float | int]:
        return {
            "rate_rps": self.rate_rps,
            "sent": self.sent,
            "achieved_rps": round(self.achieved_rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "errors": self.errors,
        }


def percentiles_ms(seconds: list[float]) -> tuple[float, float, float, float]:
    if not seconds:
        return (float("nan"),) * 4  # type: ignore[return-value]
    arr = np.asarray(seconds) * 1000
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return float(p50), float(p95), float(p99), float(arr.max())


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


class _Pool:
    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.free: asyncio.Queue = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self.free.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def close(self) -> None:
        while not self.free.empty():
            _, writer = self.free.get_nowait()
            writer.close()


def request_bytes(method: str, path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _run(
    host: str,
    port: int,
    path: str,
    body_for: Callable[[int], bytes],
    rate: float,
    duration_s: float,
    connections: int,
    headers: dict[str, str],
    timeout_s: float,
    on_response: Callable[[int, int, bytes], None] | None,
) -> RateResult:
    pool = _Pool(host, port, connections)
    await pool.open()
    n = max(1, int(rate * duration_s))
    latencies: list[float] = []
    samples: list[tuple[float, float]] = []
    statuses: Counter[int] = Counter()

    async def one(i: int, due: float) -> None:
        conn = await pool.free.get()
        reader, writer = conn
        try:
            writer.write(request_bytes("POST", path, host, body_for(i), headers))
            status, body = await asyncio.wait_for(_read_response(reader), timeout_s)
            if on_response is not None:
                on_response(i, status, body)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            status = 0
            writer.close()
            conn = await asyncio.open_connection(host, port)
        pool.free.put_nowait(conn)
        statuses[status] += 1
        latency = time.perf_counter() - due
        latencies.append(latency)
        samples.append((due - start, latency))

    tasks = []
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    await pool.close()
    p50, p95, p99, worst = percentiles_ms(latencies)
    errors = sum(c for s, c in statuses.items() if s != 200)
    return RateResult(
        rate, n, p50, p95, p99, worst, errors, dict(statuses), n / elapsed, samples=samples
    )


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
    on_response: Callable[[int, int, bytes], None] | None = None,
) -> RateResult:
    """Offer ``rate`` POSTs/s to ``url + path`` for ``duration_s``; every non-200 is an error."""
    host, port = host_port(url, 80)
    return asyncio.run(
        _run(
            host,
            port,
            path,
            body_for,
            rate,
            duration_s,
            connections,
            headers or {},
            timeout_s,
            on_response,
        )
    )
