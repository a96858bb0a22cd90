"""The single Redis connection factory and key helper.

Every Redis client Taskloom uses (the app client, rate limits, caches and BullMQ's connections)
is built by this package from the one set of REDIS_* settings, and every key is built by
`Keys`, so TLS, credentials, bounded retries and the environment prefix apply to all of them. A
test fails if another module constructs a client. See docs/REDIS.md for operators.

- factory.py   `create_redis` (one server, or the modes below), BullMQ's options, `connect_redis`
- sentinel.py  the master Redis Sentinel names, and failover retries
- cluster.py   a Redis Cluster client (REDIS_CLUSTER)
- errors.py    what a failure to connect means, in one sentence
- keys.py      `Keys` (every key), `Cache` (JSON + TTL), `purge_matching`
"""

from taskloom.redis.errors import RedisConnectError, describe_target, explain_error
from taskloom.redis.factory import (
    BULLMQ_SOCKET_TIMEOUT_SECONDS,
    RETRIES,
    bullmq_options,
    connect_redis,
    connection_kwargs,
    create_bullmq_connection,
    create_redis,
)
from taskloom.redis.keys import Cache, Keys, purge_matching, redis_info_summary
from taskloom.redis.sentinel import FailoverRetry, SentinelRedis

__all__ = [
    "BULLMQ_SOCKET_TIMEOUT_SECONDS",
    "RETRIES",
    "Cache",
    "FailoverRetry",
    "Keys",
    "RedisConnectError",
    "SentinelRedis",
    "bullmq_options",
    "connect_redis",
    "connection_kwargs",
    "create_bullmq_connection",
    "create_redis",
    "describe_target",
    "explain_error",
    "purge_matching",
    "redis_info_summary",
]
