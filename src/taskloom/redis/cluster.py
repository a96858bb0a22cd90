"""Redis Cluster: one client for every node, which follows the slots as they move
(docs/REDIS.md "Redis Cluster"). Keys that one script, transaction or multi-key command uses
together share a hash tag (keys.py, `Keys.together`; BullMQ's prefix, config.py)."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskloom.config import Settings

# A command whose node went away is retried this often (redis-py refreshes the slots between
# tries) before it fails: about 1.5 s, as a replica's promotion is measured in seconds too.
CLUSTER_RETRIES = 6


def cluster_client(settings: Settings, options: dict[str, Any], *, node: dict[str, Any]) -> Redis:
    """A RedisCluster client that discovers the cluster from REDIS_URL's node (then
    REDIS_CLUSTER_NODES'); `node`: the credentials and TLS every node gets.

    Typed as `Redis`: the commands Taskloom sends (and bullmq, which accepts either) exist on
    both with the same signatures; a RedisCluster splits DEL / UNLINK / EXISTS over the slots,
    SCANs every primary, and refuses a script or a transaction whose keys span slots."""
    data = {k: v for k, v in node.items() if k not in {"host", "port", "db"}}
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in settings.redis_cluster_addresses],
        **data,
        **options,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), CLUSTER_RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return cast(Redis, client)
