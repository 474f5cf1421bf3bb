"""Feast's Redis online layout, written without Feast's per-value Python conversions.

Feast stores one Redis hash per entity: key ``serialize_entity_key(entity) + project``,
fields ``mmh3("<view>:<feature>")`` -> serialized ``ValueProto`` and ``_ts:<view>`` ->
serialized ``Timestamp``. ``FeatureStore.write_to_online_store`` builds a proto per value
and hashes every field name per row (about 1 s per 5,000 rows here). This writer hashes
field names and entity keys once, encodes the few value types the feature views use
straight to protobuf wire bytes (unit tests check them byte for byte against the protos),
and pipelines one HSET per entity, so ``get_online_features`` reads exactly what Feast
itself would have written.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

_KEY_CACHE_MAX = 500_000
"""Serialized entity keys kept per view (users repeat; the cache resets when full)."""
Packed = tuple[bytes, int] | tuple[dict[str, tuple[bytes, int]], int]
"""Packed commands and their count; on a Redis Cluster, per node name."""


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_INTS = [b"\x20" + _varint(i) for i in range(4096)]
"""Encoded ``Value(int64_val=i)`` for the counts that dominate the rows."""


def encode_int64(v: int) -> bytes:
    """``Value(int64_val=v).SerializeToString()`` (oneof members are written even when 0)."""
    v = int(v)
    return _SMALL_INTS[v] if 0 <= v < 4096 else b"\x20" + _varint(v)


def encode_double(v: float) -> bytes:
    return b"\x29" + struct.pack("<d", float(v))


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def encode_string(v: str) -> bytes:
    return _len_field(b"\x12", str(v).encode())


_ELEMENTS: dict[str, bytes] = {}
"""Encoded list elements by value: a user's ``recent_items`` (up to 200 item ids) is
rewritten on every event, and the same ids recur across users and batches."""


def encode_string_list(values: Iterable[str]) -> bytes:
    """``Value(string_list_val=StringList(val=values))``."""
    cache = _ELEMENTS
    parts = []
    for s in values:
        enc = cache.get(s)
        if enc is None:
            enc = _len_field(b"\x0a", str(s).encode())
            if len(cache) >= _KEY_CACHE_MAX:
                cache.clear()
            cache[s] = enc
        parts.append(enc)
    return _len_field(b"\x62", b"".join(parts))


def encode_timestamp_ms(ms: int) -> bytes:
    """``Timestamp`` of ``ms`` as Feast stores it (``FromDatetime`` of the UTC time)."""
    seconds, rest = divmod(int(ms), 1000)
    out = b"\x08" + _varint(seconds) if seconds else b""
    return out + (b"\x10" + _varint(rest * 1_000_000) if rest else b"")


ENCODERS = {
    "Int64": encode_int64,
    "Float64": encode_double,
    "String": encode_string,
    "Array(String)": encode_string_list,
}
"""Feast type name (as in ``rtrec.features.definitions``) -> wire encoder."""


class RedisViewWriter:
    """Writes rows of one feature view into Feast's Redis online store."""

    def __init__(self, store: Any, view_name: str, join_key: str, fields: dict[str, str]) -> None:
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import _versioned_fv_name

        config = store.config
        provider = store._get_provider()
        online = provider.online_store
        self.client = online._get_client(config.online_store)
        self.cluster = config.online_store.redis_type == "redis_cluster"
        """Feast's client is a ``RedisCluster``: commands are packed per node."""
        self.ttl = config.online_store.key_ttl_seconds
        self.project = config.project
        self.version = config.entity_key_serialization_version
        view = store.get_feature_view(view_name)
        stored_name = _versioned_fv_name(view, config)
        self.ts_field = f"_ts:{stored_name}".encode()
        self.join_key = join_key
        self.columns = [
            (name, _mmh3(f"{stored_name}:{name}"), ENCODERS[kind]) for name, kind in fields.items()
        ]
        self._keys: dict[str, bytes] = {}

    def redis_key(self, ident: str) -> bytes:
        key = self._keys.get(ident)
        if key is None:
            from feast.infra.online_stores.helpers import _redis_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            entity = EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=ident)])
            key = _redis_key(self.project, entity, entity_key_serialization_version=self.version)
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[ident] = key
        return key

    def prepare(self, rows: Sequence[tuple[str, dict[str, Any], int]]) -> Packed:
        """``(entity id, feature values, event time ms)`` rows as packed HSET commands.

        Packing here (hiredis) and sending with :func:`send_packed` skips redis-py's
        per-command pipeline bookkeeping, and lets a caller encode while Redis is busy.
        On a Redis Cluster the commands are grouped by the node serving each key's slot
        (:mod:`rtrec.features.online_cluster`).
        """
        from hiredis import pack_command

        small, ts_field, columns = _SMALL_INTS, self.ts_field, self.columns
        out: list[bytes] = []
        ends: list[tuple[bytes, int]] | None = [] if self.cluster else None
        for ident, values, ts_ms in rows:
            key = self.redis_key(ident)
            args: list[Any] = ["HSET", key, ts_field, encode_timestamp_ms(ts_ms)]
            for name, field, encode in columns:
                v = values[name]
                args.append(field)
                if encode is encode_int64 and type(v) is int and 0 <= v < 4096:
                    args.append(small[v])
                else:
                    args.append(encode(v))
            out.append(pack_command(tuple(args)))
            if self.ttl:
                out.append(pack_command(("EXPIRE", key, self.ttl)))
            if ends is not None:
                ends.append((key, len(out)))
        if ends is not None:
            from rtrec.features.online_cluster import group_by_node

            return group_by_node(self.client, out, ends)
        return b"".join(out), len(out)

    def write(self, rows: Sequence[tuple[str, dict[str, Any], int]]) -> None:
        """Upsert rows in one round trip."""
        if rows:
            send_packed(self.client, [self.prepare(rows)])


def send_packed(client: Any, writes: Sequence[Packed]) -> None:
    """Send packed commands on one connection and read (and check) every reply; on a
    Redis Cluster, on one connection per node (:mod:`rtrec.features.online_cluster`)."""
    from redis.exceptions import ResponseError

    if writes and isinstance(writes[0][0], dict):
        from rtrec.features.online_cluster import send_by_node

        send_by_node(client, writes)  # type: ignore[arg-type]
        return
    total = sum(n for _, n in writes)
    if not total:
        return
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([data for data, n in writes if n], check_health=True)
        errors = []
        for _ in range(total):
            try:
                conn.read_response()
            except ResponseError as exc:  # keep reading: the replies must be drained
                errors.append(exc)
        if errors:
            raise errors[0]
    except BaseException:
        conn.disconnect()  # unread replies would poison the next user of the connection
        raise
    finally:
        pool.release(conn)
