"""Per-node health of a Redis Cluster online store: one dead node costs only its users.

On a Redis Cluster each user's feature row lives in one of 16384 slots, and each slot on
one node. With one breaker for the whole store, a single node that stops answering (the
cluster profile's nodes have no replicas) would send every user to the fallback, though
the other nodes still hold two thirds of the rows. So the serving reader keeps, beside the
store's breaker, a breaker per node with the same semantics: a node is marked down at once
when the probe cannot reach it, or after ``trip_after`` consecutive failed or late reads;
reads of users whose slot it serves then fail at once (the caller serves its flagged
fallback) while everyone else is read as usual; the probe marks it up again as soon as it
answers. Each transition logs (WARNING down, INFO up), and the
``rtrec_serving_online_node_down`` gauge and ``rtrec_serving_online_node_trips_total``
counter, labelled by node, count them; ``/status`` lists the nodes down with the reason.

:class:`SlotMap` and :class:`NodeHealth` are plain logic (no I/O): the probe in
:mod:`rtrec.serving.online` feeds them what the nodes answered.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_right
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

from rtrec.serving.metrics import ONLINE_NODE_DOWN, ONLINE_NODE_TRIPS

logger = logging.getLogger(__name__)

SLOTS = 16384


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SlotMap:
    """Which node (``host:port``) serves a hash slot, from one node's ``CLUSTER SLOTS``."""

    def __init__(self, ranges: Iterable[tuple[int, int, str]]) -> None:
        rows = sorted(ranges)
        for (_, end, _), (start, _, _) in pairwise(rows):
            if start <= end:
                raise ValueError(f"overlapping slot ranges at slot {start}")
        self._starts = [start for start, _, _ in rows]
        self._rows = rows

    @classmethod
    def from_reply(cls, reply: list[Any], asked_host: str) -> SlotMap:
        """Parse the raw ``CLUSTER SLOTS`` reply: ``[start, end, [host, port, id], ...]``
        per range (the primary first; an empty host means the node that answered)."""
        ranges = []
        for row in reply:
            start, end, primary = int(row[0]), int(row[1]), row[2]
            host = _text(primary[0]) or asked_host
            ranges.append((start, end, f"{host}:{int(primary[1])}"))
        return cls(ranges)

    @property
    def nodes(self) -> list[str]:
        return sorted({node for _, _, node in self._rows})

    @property
    def covered(self) -> int:
        return sum(end - start + 1 for start, end, _ in self._rows)

    def node_for(self, slot: int) -> str | None:
        """The node serving ``slot``; None when no node serves it."""
        i = bisect_right(self._starts, slot) - 1
        if i < 0:
            return None
        start, end, node = self._rows[i]
        return node if start <= slot <= end else None


class NodeHealth:
    """A breaker per node: ``down`` maps each node marked down to the reason."""

    def __init__(self, what: str, *, trip_after: int) -> None:
        self.what = what
        """The store in words ("online store"): log lines start with it."""
        self.trip_after = trip_after
        self.down: dict[str, str] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def reason(self, node: str) -> str | None:
        return self.down.get(node)

    def failed(self, node: str, reason: str) -> bool:
        """A read that ``node`` failed or answered late; True when this marked it down."""
        with self._lock:
            count = self._failures.get(node, 0) + 1
            self._failures[node] = count
        if count >= self.trip_after:
            return self.trip(node, reason)
        return False

    def succeeded(self, node: str) -> None:
        """A read ``node`` answered in time: its consecutive failures start again at 0."""
        if self._failures.get(node):
            with self._lock:
                self._failures[node] = 0

    def trip(self, node: str, reason: str) -> bool:
        """Mark ``node`` down (again) with ``reason``; True when it was up until now."""
        with self._lock:
            was_up = node not in self.down
            self.down = {**self.down, node: reason[:200]}  # readers see one dict or the other
        if was_up:
            logger.warning(
                "%s node %s marked down: %s; users whose slots it serves get the fallback",
                self.what,
                node,
                reason[:200],
            )
            ONLINE_NODE_TRIPS.labels(node).inc()
            ONLINE_NODE_DOWN.labels(node).set(1)
        return was_up

    def close(self, node: str) -> None:
        """``node`` answers again: read its users' rows from it again."""
        with self._lock:
            self._failures[node] = 0
            if node not in self.down:
                return
            self.down = {n: r for n, r in self.down.items() if n != node}
        logger.info("%s node %s answers again; its users are read again", self.what, node)
        ONLINE_NODE_DOWN.labels(node).set(0)

    def observe(self, answers: dict[str, str | None]) -> None:
        """One probe round: node -> None (answered) or why not. Nodes no longer in the
        layout are forgotten (a resharded-away node does not stay down forever)."""
        for node in [n for n in self.down if n not in answers]:
            self.close(node)
        for node, error in answers.items():
            if error is None:
                self.close(node)
                ONLINE_NODE_DOWN.labels(node).set(0)  # every node of the layout shows
            else:
                self.trip(node, error)
