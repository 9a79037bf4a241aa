"""Every pipeline test runs on one Redis and on a Redis Cluster of three masters."""

from __future__ import annotations

import pytest
import redis

from flows.retry import RedisClient, connect


@pytest.fixture(params=["redis", "cluster"])
def store_client(request: pytest.FixtureRequest, redis_client: redis.Redis) -> RedisClient:
    if request.param == "cluster":
        return connect(request.getfixturevalue("valkey_cluster").url)
    return redis_client
