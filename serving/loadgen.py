"""Open-loop HTTP load at a fixed offered rate over keep-alive connections.

Request ``i`` is due at ``start + i / rate`` whether or not earlier ones have answered,
and its latency is measured from that due time, so a stalled server shows up in the
percentiles instead of silently lowering the rate (no coordinated omission). The client
is a few lines of asyncio speaking HTTP/1.1 directly: a general client library costs more
CPU per request than the service under test, and both share the same cores.

Requests are released at their due times by a dispatcher thread sleeping with
``time.sleep`` (nanosecond timers), not by ``asyncio.sleep``: the event loop waits in
``epoll_wait``, whose timeout is whole milliseconds rounded up, so a loop-timed schedule
sends each request up to a millisecond late (p50 0.65 ms, p99 1.2 ms measured on the
2-core bench host) and that client lateness would be charged to the server. The
thread hands each request to the loop through ``call_soon_threadsafe``, which wakes the
loop at once. Each sample keeps ``send_lag_s``, the client's own delay from the due time
to the request's release, so the client's share of the figures stays visible.

:func:`run_schedule` offers any mix of requests (each a :class:`Request` with its own
method, path, body and endpoint tag) and returns one :class:`Sample` per request;
:func:`summarize` turns the samples of one tag into percentiles, errors by status and the
slowest requests' due times (:mod:`rtrec.serving.loadreport`, with :func:`run_rate`, the
single-endpoint POST form).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
    send_lag_s: float = 0.0
    """From the due time to the request's release on the loop: the client's own delay."""

    @property
    def ok(self) -> bool:
        return self.status.isdigit() and 200 <= int(self.status) < 300


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
        async with asyncio.timeout(timeout_s):  # no extra task per request, as wait_for has
            status, body = await _read_response(reader)
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


def _dispatch(
    loop: asyncio.AbstractEventLoop,
    start: float,
    n: int,
    rate: float,
    request_for: Callable[[int], Request],
    launch: Callable[[int, Request, float], None],
    finished: asyncio.Future[None],
) -> None:
    """Dispatcher thread: release request ``i`` to the loop at ``start + i / rate``."""
    try:
        for i in range(n):
            req = request_for(i)  # built before the due time: no client work on the clock
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(launch, i, req, due)
    except BaseException as exc:  # handed to the loop, which raises it in the run
        loop.call_soon_threadsafe(finished.set_exception, exc)
        return
    loop.call_soon_threadsafe(finished.set_result, None)


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
    loop = asyncio.get_running_loop()

    async def one(i: int, req: Request, due: float, lag: float) -> None:
        status, body = await _exchange(pool, req, headers, timeout_s)
        latency = time.perf_counter() - due
        if on_response is not None:
            on_response(i, req, status, body)
        samples.append(Sample(i, req.tag, due - start, latency, status, lag))

    # Only requests in flight are kept: a gather over every request of a long run (120k
    # in a soak) is itself a pause of hundreds of ms, charged to the last requests.
    in_flight: set[asyncio.Task[None]] = set()

    def launch(i: int, req: Request, due: float) -> None:
        task = loop.create_task(one(i, req, due, time.perf_counter() - due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    finished: asyncio.Future[None] = loop.create_future()
    start, started_unix = time.perf_counter(), time.time()
    stalls: list[tuple[float, float]] = []
    beat = asyncio.create_task(heartbeat(start, stalls))
    args = (loop, start, n, rate, request_for, launch, finished)
    threading.Thread(target=_dispatch, args=args, name="loadgen-dispatch", daemon=True).start()
    await finished
    while in_flight:
        await asyncio.wait(set(in_flight))
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
    # The collector is paused for the run: a full collection of this process is a pause
    # of every due request, which the percentiles would charge to the server.
    collecting = gc.isenabled()
    gc.disable()
    # The dispatcher thread needs the GIL for a moment at each due time; with the default
    # 5 ms switch interval a busy loop thread could make it wait that long.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        return asyncio.run(
            _run(
                host, port, request_for, n, rate, connections, headers or {}, timeout_s, on_response
            )
        )
    finally:
        sys.setswitchinterval(switch)
        if collecting:
            gc.enable()
