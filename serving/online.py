"""Bounded reads of the online store, behind a circuit breaker (``rtrec.serving.breaker``).

The request path awaits :meth:`GuardedFeatures.read`: with Redis as the online store it
is :class:`rtrec.features.OnlineReader` (redis-py's asyncio client, the keys and encoding
Feast's own read uses), so the event loop serves other requests while Redis answers; a
custom fetch function or the local SQLite store run on the breaker's worker threads,
awaited, never blocking the loop either. Calling the object (``guarded(ids)``) is the same
read, blocking: for code without an event loop.

While the breaker is open requests skip the store at once (the caller serves its flagged
fallback). The probe pings Redis all the time, so an outage opens the breaker before
requests run into it, and closes it as soon as Redis answers again.

On a Redis Cluster the probe pings each node on its own and reads the slot layout, and a
breaker per node (:mod:`rtrec.serving.node_health`) decides for each read: a node that does
not answer the probe, or fails or misses the deadline on ``trip_after_timeouts`` reads in a
row, is marked down, and only the users whose slots it serves get the fallback. The store's
own breaker opens only when no node answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from rtrec.serving.breaker import Breaker
from rtrec.serving.node_health import NodeHealth, SlotMap

from rtrec.config import Settings
from rtrec.errors import Unavailable

if TYPE_CHECKING:
    from rtrec.features import OnlineReader

logger = logging.getLogger(__name__)

Fetch = Callable[[list[str]], list[dict[str, Any]]]


class GuardedFeatures(Breaker):
    """``__call__(user_ids)`` like :func:`rtrec.features.online_features`, bounded and guarded."""

    def __init__(
        self,
        settings: Settings,
        fetch: Fetch | None = None,
        *,
        timeout_s: float = 0.25,
        probe_interval_s: float = 0.5,
        trip_after_timeouts: int = 3,
    ) -> None:
        from rtrec.features import online_features

        super().__init__(
            "online store",
            timeout_s=timeout_s,
            probe_interval_s=probe_interval_s,
            timeout_says="read exceeded",
            trip_after_timeouts=trip_after_timeouts,
            probe_while_closed=True,
            workers=4,
            thread_name="online-features",
        )
        self.settings = settings
        self._fetch: Fetch = fetch or (lambda ids: online_features(settings, ids))
        self._default_fetch = fetch is None
        self.reader: OnlineReader | None = None
        self._probe_client: Any = None
        self.nodes: NodeHealth | None = None
        """Per-node breakers on a Redis Cluster (None: one Redis, or not Redis)."""
        self.slots: SlotMap | None = None
        """The cluster's slot layout as the probe last read it (None: not read yet)."""
        self._node_clients: dict[str, Any] = {}
        if fetch is None and settings.feast.online_store == "redis":
            from rtrec.features import OnlineReader

            self.reader = OnlineReader.for_users(settings)
            if settings.redis.cluster:
                self.nodes = NodeHealth(self.name, trip_after=trip_after_timeouts)

    @property
    def nodes_down(self) -> dict[str, str]:
        """Cluster nodes marked down -> why (``/status``); empty on one Redis."""
        return dict(self.nodes.down) if self.nodes is not None else {}

    def __call__(self, user_ids: list[str]) -> list[dict[str, Any]]:
        return self.call(self._fetch, user_ids)

    async def read(self, user_ids: list[str]) -> list[dict[str, Any]]:
        """Features per user, awaited within the deadline; :class:`Unavailable` otherwise."""
        reader = self.reader
        if reader is not None:
            if not reader.prepared:  # warm() failed and the store has not come back yet
                raise Unavailable(f"{self.name} reader not prepared: {self.down_reason}")
            nodes, slots = self.nodes, self.slots
            if nodes is not None and slots is not None:
                return await self._read_by_node(reader, user_ids, nodes, slots)
            return await self.acall(reader.read, user_ids)
        return await self.acall(self._on_thread, user_ids)

    async def _read_by_node(
        self, reader: OnlineReader, user_ids: list[str], nodes: NodeHealth, slots: SlotMap
    ) -> list[dict[str, Any]]:
        """:meth:`Breaker.acall` with a breaker per cluster node: a user whose slot's node
        is marked down fails at once; a read that one node failed or answered late counts
        against that node only (a read spanning nodes cannot say which one failed)."""
        from redis.crc import key_slot

        self._raise_if_open()
        serving = {slots.node_for(key_slot(reader.redis_key(u))) for u in user_ids}
        for node in serving:
            reason = nodes.reason(node) if node is not None else None
            if reason is not None:
                raise Unavailable(f"{self.name} node {node} marked down: {reason}")
        one = next(iter(serving)) if len(serving) == 1 else None
        try:
            async with asyncio.timeout(self.timeout_s):
                out = await reader.read(user_ids)
        except TimeoutError:
            msg = f"{self.name} {self.timeout_says} {self.timeout_s * 1000:.0f} ms at node {one}"
            if one is not None:
                nodes.failed(one, msg)
            raise Unavailable(msg) from None
        except Unavailable as exc:
            if one is not None:
                nodes.failed(one, str(exc))
            raise
        if one is not None:
            nodes.succeeded(one)
        return out

    async def _on_thread(self, user_ids: list[str]) -> list[dict[str, Any]]:
        return await asyncio.wrap_future(self._pool.submit(self._fetch, user_ids))

    def warm(self, *, timeout_s: float = 30.0) -> bool:
        """Build the Feast store now (seconds) rather than on the first request.

        Bounded: if the store does not answer in time the service starts anyway and
        serves fallbacks until the probe sees the store.
        """
        future = self._pool.submit(self._first_read)
        try:
            future.result(timeout=timeout_s)
            return True
        except FutureTimeout:
            # The breaker stays open (requests get the flagged fallback) until the probe
            # sees Redis and close() has prepared the reader.
            self.trip(f"online store not ready after {timeout_s:.0f} s at start")
        except Unavailable as exc:
            self.trip(str(exc))
        return False

    def _first_read(self) -> None:
        from pathlib import Path

        repo = Path(str(self.settings.feast.repo_path))
        if self._default_fetch and not (repo / "registry.db").exists():
            # Register the feature repo through rtrec.features.apply directly: get_store's own
            # apply-on-first-use path deadlocks on its lock (reported to its owner).
            from rtrec.features import apply

            apply(self.settings)
        if self.reader is not None:
            self.reader.prepare()
        self._fetch(["warmup"])

    def close(self) -> None:
        """Let reads through again, once the asyncio reader is prepared: a store that was
        down at start never let :meth:`warm` prepare it."""
        if self.reader is not None and not self.reader.prepared:
            try:
                self._first_read()
            except Exception as exc:  # the store answers PING but is not usable yet
                self.trip(f"online reader not ready: {exc}")
                return
        super().close()

    def start(self) -> None:
        if self.settings.feast.online_store == "redis":  # the local store has nothing to ping
            super().start()

    def probe(self) -> str | None:
        """None when Redis answers a PING within 200 ms, else the reason (on a cluster:
        see :meth:`_probe_nodes`).

        One client for every probe: building a client from the URL and connecting twice a
        second held the GIL for about a millisecond each time, which the request path
        paid as latency. redis-py reconnects a broken connection on the next call."""
        if self.nodes is not None:
            return self._probe_nodes(self.nodes)
        try:
            if self._probe_client is None:
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                from rtrec.redis_clients import redis_client

                self._probe_client = redis_client(
                    self.settings,
                    socket_timeout=0.2,
                    socket_connect_timeout=0.2,
                    retry=Retry(NoBackoff(), 0),
                )
            self._probe_client.ping()
            return None
        except Exception as exc:  # any failure means "not usable now"
            return f"redis ping failed: {exc}"

    def _probe_nodes(self, nodes: NodeHealth) -> str | None:
        """Ping each node of the cluster on its own (200 ms each), read the slot layout
        from the first that answers, and mark each node down or up; the reason when no
        node answered (the store's breaker then opens), else None."""
        from rtrec.redis_clients import cluster_nodes

        if self.slots is not None:
            known = self.slots.nodes
        else:
            known = [f"{host}:{port}" for host, port in cluster_nodes(self.settings)]
        answers: dict[str, str | None] = {}
        layout: SlotMap | None = None
        for node in known:
            try:
                client = self._node_client(node)
                client.ping()
                if layout is None:
                    reply = client.execute_command("CLUSTER SLOTS")
                    layout = SlotMap.from_reply(reply, node.rsplit(":", 1)[0])
                answers[node] = None
            except Exception as exc:  # refused, timed out, loading: not usable now
                answers[node] = f"redis ping failed: {exc}"[:200]
        if layout is not None:
            self.slots = layout
        nodes.observe(answers)
        if any(error is None for error in answers.values()):
            return None
        return "no Redis Cluster node answered: " + "; ".join(
            f"{node}: {error}" for node, error in answers.items()
        )

    def _node_client(self, node: str) -> Any:
        """One kept client per node (see :meth:`probe` for why kept)."""
        client = self._node_clients.get(node)
        if client is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            from rtrec.redis_clients import node_client

            client = node_client(
                self.settings,
                node,
                socket_timeout=0.2,
                socket_connect_timeout=0.2,
                retry=Retry(NoBackoff(), 0),
            )
            self._node_clients[node] = client
        return client
