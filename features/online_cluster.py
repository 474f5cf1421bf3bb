"""The online writer's packed commands on a Redis Cluster: grouped and sent per node.

:class:`rtrec.features.online_writer.RedisViewWriter` packs one ``HSET`` per entity and
sends a batch on one connection, reading the replies after. On a cluster each entity's
key lives in one of 16384 slots, served by one node, and a node answers ``MOVED`` for a
key it does not serve; so the commands are grouped by the node that serves each key's
slot (as the client knows the layout now), every group is sent before any reply is read
(one round trip in all, not one per node), and each node's replies are read and checked.

A ``MOVED`` or ``ASK`` reply means the layout changed under the writer (slots resharded,
a node replaced): the client's layout is refreshed and the error raised, so the caller's
retry of the batch goes to the right nodes. An entity's commands stay together and in
order, so a batch never leaves half an entity on one node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ByNode = dict[str, tuple[bytes, int]]
"""Node name (``host:port``) -> its packed commands and their count."""


def group_by_node(
    client: Any, commands: list[bytes], ends: list[tuple[bytes, int]]
) -> tuple[ByNode, int]:
    """``commands`` grouped by the node serving each entity's key: ``ends`` holds each
    entity's key and the index just past its last command, in order."""
    from redis.crc import key_slot

    nodes = client.nodes_manager
    groups: dict[str, list[bytes]] = {}
    start = 0
    for key, end in ends:
        name = nodes.get_node_from_slot(key_slot(key)).name
        groups.setdefault(name, []).extend(commands[start:end])
        start = end
    return {n: (b"".join(c), len(c)) for n, c in groups.items()}, len(commands)


def send_by_node(client: Any, writes: Sequence[tuple[ByNode, int]]) -> None:
    """Send every node its commands, then read and check every reply; the first error
    is raised once all replies are drained (see the module docstring for MOVED)."""
    from redis.exceptions import AskError, MovedError, ResponseError

    merged: dict[str, list[tuple[bytes, int]]] = {}
    for by_node, _ in writes:
        for name, packed in by_node.items():
            if packed[1]:
                merged.setdefault(name, []).append(packed)
    held: list[tuple[Any, Any, int]] = []
    errors: list[Exception] = []
    try:
        for name, packed in merged.items():
            pool = client.get_redis_connection(client.get_node(node_name=name)).connection_pool
            conn = pool.get_connection()
            held.append((pool, conn, sum(n for _, n in packed)))
            conn.send_packed_command([data for data, _ in packed], check_health=True)
        for _, conn, count in held:
            for _ in range(count):
                try:
                    conn.read_response()
                except ResponseError as exc:  # keep reading: the replies must be drained
                    errors.append(exc)
    except BaseException:
        for _, conn, _ in held:
            conn.disconnect()  # unread replies would poison the next user of the connection
        raise
    finally:
        for pool, conn, _ in held:
            pool.release(conn)
    if errors:
        if any(isinstance(e, MovedError | AskError) for e in errors):
            client.nodes_manager.initialize()
        raise errors[0]
