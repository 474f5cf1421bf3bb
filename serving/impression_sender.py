"""Impressions sent by a child process: the Kafka client's work off the service's GIL.

Why a process. kafka-python is pure Python: encoding, its sender thread's polling and the
acknowledgement wait all hold the GIL. Run in the service, a round of impressions every
0.25 s took the interpreter from the event loop in bursts of a few milliseconds; requests
arriving meanwhile waited for it (the service's p99 at 200 req/s rose by about half a
millisecond, more than everything else impressions cost). In a child process that work
runs on another core, and the service's share of a round is one ``orjson.dumps`` of the
queued answers and one pipe write.

The protocol, one round at a time: the service writes a frame (4-byte big-endian length,
then an orjson array of queued entries ``[ts, user_id, k, fallback label, answer]``) to
the child's stdin; the child builds the impressions (:func:`impression`), packs them into
records (:func:`chunks`, :func:`rtrec.events.pack_impressions`), sends and flushes them,
and answers one JSON line on stdout: ``{"ok": n}``, or ``{"error": "..."}`` when the
broker did not take them (its producer is then rebuilt for the next round). The service
side, :class:`ProcessSender`, waits for that line within the broker deadline; a child
that does not answer in time, or has exited, is killed and restarted on the next round,
and the round counts as dropped (the impression log's breaker, as for the broker).
When the service's stdin end closes (it stopped, or was killed) the child flushes and
exits: no orphan outlives the service.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time
from typing import Any

from rtrec.errors import Unavailable

RECORD_ITEMS = 4000
"""Most shown items per record: about 250 kB, under the producer's 1 MB request limit."""
_HEADER = struct.Struct(">I")
READY_S = 15.0
NICE = 10
"""How much lower the child's CPU priority is than the service's. Its work can wait (a
round has the broker deadline), a request cannot: on a busy host the scheduler gives the
service's threads the core first, and the child the time they leave."""
"""How long a starting child may take to import its Kafka client and say it is ready."""

Entry = tuple[int, str, int, str | None, dict[str, Any]]
"""What the request path queues: (ts ms, raw user id, k asked, fallback label, answer)."""


def impression(entry: Entry) -> dict[str, Any]:
    """The impression event of one queued answer (positions start at 1, the top item)."""
    ts, user, k, label, answer = entry
    return {
        "request_id": answer["request_id"],
        "ts": ts,
        "user_id": user,
        "user_id_hash": answer["user_id_hash"],
        "variant": answer["variant"],
        "experiment": answer.get("experiment"),
        "model_version": answer["model_version"],
        "k": k,
        "items": [
            {"item_id": item["item_id"], "position": n, "score": item["score"]}
            for n, item in enumerate(answer["items"], start=1)
        ],
        "fallback": answer["fallback"],
        "fallback_reason": label,
    }


def chunks(impressions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive runs of impressions of at most :data:`RECORD_ITEMS` shown items each."""
    out: list[list[dict[str, Any]]] = [[]]
    items = 0
    for imp in impressions:
        n = len(imp["items"]) + 1
        if out[-1] and items + n > RECORD_ITEMS:
            out.append([])
            items = 0
        out[-1].append(imp)
        items += n
    return out


def send_batch(producer: Any, topic: str, entries: list[Entry], timeout_s: float) -> None:
    """Produce ``entries`` as impression records and wait for the broker's acknowledgement
    of every one (raises what the producer raised)."""
    from rtrec.events import pack_impressions

    futures = [
        producer.send(topic, key=None, value=pack_impressions(chunk))
        for chunk in chunks([impression(entry) for entry in entries])
    ]
    producer.flush(timeout=timeout_s)
    for future in futures:
        future.get(timeout=0)  # done after the flush: raises a record's error


class ProcessSender:
    """The service's side: starts the child, hands it each round, waits for its answer."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float) -> None:
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def send(self, entries: list[Entry]) -> None:
        """One round; :class:`Unavailable` if the child or the broker did not take it."""
        import orjson

        payload = orjson.dumps(entries)
        proc = self._proc if self._proc is not None else self.start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            proc.stdin.flush()
        except OSError as exc:
            self._stop(kill=True)
            raise Unavailable(f"impression sender exited ({exc})") from None
        reply = orjson.loads(self._reply(proc, self.timeout_s + 1.0))
        if "error" in reply:
            raise Unavailable(f"impression broker unavailable: {reply['error']}")

    def close(self, timeout_s: float = 1.0) -> None:
        """Close the child's stdin (it flushes and exits), killing it past ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start(self, ready_s: float = READY_S) -> subprocess.Popen[bytes]:
        """Start the child and wait until it has imported the Kafka client (the service
        does at start, so no round waits for that); :meth:`send` restarts it after a
        failure."""
        cmd = [sys.executable, "-m", __name__, self.bootstrap, self.topic, str(self.timeout_s)]
        self._proc = proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._buffer = b""
        self._reply(proc, ready_s)  # its "ready" line
        return proc

    def _reply(self, proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
        """The child's next line within ``timeout_s`` (a round: the broker deadline plus
        a second for the child itself); a silent or exited child is killed, and raises."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._stop(kill=True)
                raise Unavailable(f"impression sender did not answer within {timeout_s:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                rc = proc.poll()
                self._stop(kill=True)
                raise Unavailable(f"impression sender exited (status {rc})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and kill:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    """The child: frames from stdin, one answer line each on stdout, until stdin closes."""
    import orjson
    from kafka import KafkaProducer

    bootstrap, topic, timeout = (argv or sys.argv[1:])[:3]
    timeout_s = float(timeout)
    os.nice(NICE)
    from rtrec.serving.feedback import broker_reachable

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b'{"ready": true}\n')
    stdout.flush()
    producer: Any = None
    while header := stdin.read(_HEADER.size):
        entries = orjson.loads(stdin.read(_HEADER.unpack(header)[0]))
        try:
            if producer is None:
                unreachable = broker_reachable(bootstrap)
                if unreachable is not None:  # in ms, not after kafka-python's bootstrap
                    raise Unavailable(unreachable)
                producer = KafkaProducer(
                    bootstrap_servers=bootstrap,
                    linger_ms=10,
                    batch_size=256 * 1024,
                    max_block_ms=int(timeout_s * 1000),
                    request_timeout_ms=int(timeout_s * 1000),
                )
            send_batch(producer, topic, entries, timeout_s)
            reply: dict[str, Any] = {"ok": len(entries)}
        except Exception as exc:  # the service counts the round as dropped, saying why
            if producer is not None:
                producer.close(timeout=0)
            producer = None
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        stdout.write(orjson.dumps(reply) + b"\n")
        stdout.flush()
    if producer is not None:
        producer.close(timeout=timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
