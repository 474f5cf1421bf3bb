"""Feast's Redis online layout, read with redis-py's asyncio client.

Why not ``FeatureStore.get_online_features``: it is synchronous, so an ``async`` request
handler must either block the event loop on it or hand it to a thread and wait, and its
Python read path (request parsing, protos, response building) costs about as much as the
whole retrieval behind it. A server that blocks its loop on one slow read stalls every
request behind that read.

This reader asks Redis for exactly what Feast's Redis store reads — one ``HMGET`` per
entity on the key ``serialize_entity_key(entity) + project``, fields
``mmh3("<view>:<feature>")`` — pipelined in one round trip, and turns each stored
``ValueProto`` into Python with Feast's own converter, so it returns what
``get_online_features(...).to_dict()`` returns, value for value (a test reads both ways).
Key and field names come from the registered feature view (versioned names included), so
they follow Feast's layout rather than a copy of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

_KEY_CACHE_MAX = 500_000
"""Serialized entity keys kept (users repeat; the cache resets when full)."""


class OnlineReader:
    """``await reader.read(ids)`` -> one dict of feature values per id, in order (``None``
    values for an id the store does not hold), for one feature view.

    :meth:`prepare` (synchronous, seconds: it loads Feast's registry) must run once before
    the first read; the asyncio client is created on the first read, in the event loop that
    awaits it, since its connections belong to that loop.
    """

    def __init__(self, settings: Settings, view: str, join_key: str, names: list[str]) -> None:
        self.settings = settings
        self.view = view
        self.join_key = join_key
        self.names = list(names)
        self._fields: list[bytes] = []
        self._project = b""
        self._version = 3
        self._keys: dict[str, bytes] = {}
        self._client: Any = None
        self._convert: Callable[[bytes | None], Any] | None = None

    @classmethod
    def for_users(cls, settings: Settings) -> OnlineReader:
        """The reader of the user stream view, the features the user tower needs."""
        from rtrec.features import definitions as defs

        return cls(settings, defs.USER_STREAM_VIEW, "user_id", list(defs.user_stream_fields()))

    @property
    def prepared(self) -> bool:
        return self._convert is not None

    def prepare(self) -> None:
        """Resolve the view's stored field names and the entity-key encoding from Feast's
        registry (applying the repository first if it was never applied)."""
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import _versioned_fv_name
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type
        from rtrec.features.store import get_store

        store = get_store(self.settings)
        config = store.config
        if config.online_store.type != "redis":
            raise Unavailable(
                f"the asyncio reader reads Redis; the online store is {config.online_store.type!r}"
            )
        stored = _versioned_fv_name(store.get_feature_view(self.view), config)
        self._fields = [_mmh3(f"{stored}:{name}") for name in self.names]
        self._project = config.project.encode()
        self._version = config.entity_key_serialization_version
        parse = Value.FromString

        def convert(raw: bytes | None) -> Any:
            return None if not raw else feast_value_type_to_python_type(parse(raw))

        self._convert = convert

    def redis_key(self, ident: str) -> bytes:
        key = self._keys.get(ident)
        if key is None:
            from feast.infra.key_encoding_utils import serialize_entity_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            entity = EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=ident)])
            key = serialize_entity_key(entity, self._version) + self._project
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[ident] = key
        return key

    async def read(self, ids: list[str]) -> list[dict[str, Any]]:
        """Feature values per id; :class:`Unavailable` when Redis fails (the caller bounds
        the wait: see :class:`rtrec.serving.online.GuardedFeatures`)."""
        convert = self._convert
        if convert is None:
            raise Unavailable("online reader used before prepare()")
        client = self._client or self._connect()
        try:
            if len(ids) == 1:  # the serving path: one command, no pipeline bookkeeping
                rows = [await client.hmget(self.redis_key(ids[0]), self._fields)]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for ident in ids:
                        pipe.hmget(self.redis_key(ident), self._fields)
                    rows = await pipe.execute()
        except Exception as exc:  # connection refused, reset, auth: "not usable now"
            from rtrec.features.repo import redacted_url

            raise Unavailable(
                f"online store read failed at {redacted_url(self.settings.redis.url)}: {exc}"
            ) from exc
        names = self.names
        return [{n: convert(v) for n, v in zip(names, row, strict=True)} for row in rows]

    def _connect(self) -> Any:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from rtrec.redis_clients import async_redis_client

        # No client-side retries (redis-py retries 3 times with 1-10 s backoff by default):
        # the caller's deadline and circuit breaker decide what a failure costs. On a
        # Redis Cluster this is a cluster client: each key goes to its slot's node.
        self._client = async_redis_client(self.settings, retry=Retry(NoBackoff(), 0))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
