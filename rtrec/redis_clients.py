"""Redis clients for every rtrec process: one Redis, or a Redis Cluster, from the settings.

Why one place: the stream processor, the feature store's helpers, the serving reader, the
shared rate limiter and the CLI all open Redis clients. With ``redis.cluster`` each must
be a cluster client (``RedisCluster``: it routes a key to the node serving its slot and
follows the cluster's redirections), authenticate with the cluster's password, and leave
the URL's database out (a cluster has only database 0). Opened here, a client is right
for either deployment, and the embedded default stays ``Redis.from_url(redis.url)``.

The password is ``redis.password``, else the URL's own, else, for cluster nodes the
cluster profile runs on this machine, the one it generated into
``<work_dir>/secrets/redis_password``: that file is missing only when the profile never
started, which is an error naming the fix, never a connection without a password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rtrec.config import Settings
from rtrec.errors import ConfigError

PASSWORD_FILE = Path("secrets") / "redis_password"
"""Under the work dir: the cluster profile's generated Redis password (mode 0600)."""
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def local_cluster(settings: Settings) -> bool:
    """Whether the cluster profile runs the Redis Cluster nodes on this machine."""
    return settings.redis.cluster and settings.redis.host_port[0] in _LOOPBACK


def password(settings: Settings) -> str | None:
    """The password clients send (see the module docstring); None: Redis needs none."""
    if settings.redis.password is not None:
        return settings.redis.password.get_secret_value()
    if urlsplit(settings.redis.url).password is not None:
        return None  # the URL carries it; redis-py reads it from there
    if not local_cluster(settings):
        return None
    path = settings.work_dir / PASSWORD_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no Redis Cluster password at {path}: start the nodes with "
            "`rtrec up --profile cluster` (it generates one), or set RTREC_REDIS__PASSWORD"
        ) from None


def cluster_nodes(settings: Settings) -> list[tuple[str, int]]:
    """Where a cluster client may start: ``redis.url``'s node, then the other nodes the
    profile runs here (any one that answers tells the client the whole layout)."""
    host, port = settings.redis.host_port
    nodes = [(host, port)]
    if local_cluster(settings):
        nodes += [(host, p) for p in settings.cluster.redis.ports if p != port]
    return nodes


def cluster_options(settings: Settings) -> dict[str, Any]:
    """Connection options of a cluster client from ``redis.url`` (scheme, user, password);
    a database other than 0 is a :class:`ConfigError`: a cluster has no other."""
    from redis.connection import SSLConnection, parse_url

    url = settings.redis.url
    parts = parse_url(url)
    if int(parts.get("db", 0) or 0) != 0:
        raise ConfigError(f"redis.url: a Redis Cluster has only database 0, not {parts['db']}")
    options: dict[str, Any] = {}
    if parts.get("connection_class") is SSLConnection:
        options["ssl"] = True
    for key in ("username", "password"):
        if parts.get(key):
            options[key] = parts[key]
    return options


def redis_client(settings: Settings, **options: Any) -> Any:
    """A synchronous client: ``redis.Redis`` or ``redis.cluster.RedisCluster``.
    ``options`` are redis-py's (``socket_timeout``, ``retry``, ...)."""
    secret = password(settings)
    if secret is not None:
        options["password"] = secret
    if not settings.redis.cluster:
        import redis

        return redis.Redis.from_url(settings.redis.url, **options)
    from redis.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode(h, p) for h, p in cluster_nodes(settings)]
    return RedisCluster(startup_nodes=nodes, **{**cluster_options(settings), **options})


def node_client(settings: Settings, node: str, **options: Any) -> Any:
    """A plain ``redis.Redis`` of one Redis Cluster node (``host:port``), with the
    cluster's password and the URL's connection options: commands to it ask that node
    alone (a health probe per node), never the cluster's router."""
    import redis

    host, port = node.rsplit(":", 1)
    secret = password(settings)
    if secret is not None:
        options["password"] = secret
    return redis.Redis(host=host, port=int(port), **{**cluster_options(settings), **options})


def async_redis_client(settings: Settings, **options: Any) -> Any:
    """An asyncio client: ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``.
    Its connections belong to the event loop that first uses it."""
    secret = password(settings)
    if secret is not None:
        options["password"] = secret
    if not settings.redis.cluster:
        from redis.asyncio import Redis

        return Redis.from_url(settings.redis.url, **options)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode(h, p) for h, p in cluster_nodes(settings)]
    return RedisCluster(startup_nodes=nodes, **{**cluster_options(settings), **options})
