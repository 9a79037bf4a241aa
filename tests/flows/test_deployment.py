"""The deployment marker: a recovery directory belongs to one Redis; a lost Redis is caught."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis

from engine.errors import ConfigError
from flows.stores.deployment import Marker, RedisDataLost, claim_recovery_dir
from flows.stores.keys import Keys

pytestmark = pytest.mark.integration


def snapshot_in(directory: Path) -> None:
    """What Bytewax leaves after a run: a partition file (its content is not read here)."""
    (directory / "part-0.sqlite3").write_bytes(b"")


def test_a_new_directory_is_adopted_and_made_private(
    tmp_path: Path, redis_client: redis.Redis, unique: str
) -> None:
    directory = tmp_path / "recovery"
    marker = claim_recovery_dir(str(directory), redis_client, unique)
    assert redis_client.get(Keys(unique).recovery) == marker.token.encode()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "tetik.json").stat().st_mode) == 0o600
    marker.check()  # Redis holds the token


def test_snapshots_resume_against_their_own_redis(
    tmp_path: Path, redis_client: redis.Redis, unique: str
) -> None:
    first = claim_recovery_dir(str(tmp_path), redis_client, unique)
    snapshot_in(tmp_path)
    again = claim_recovery_dir(str(tmp_path), redis_client, unique)
    assert again.token == first.token


def test_another_deployments_directory_is_refused(
    tmp_path: Path, redis_client: redis.Redis, unique: str
) -> None:
    claim_recovery_dir(str(tmp_path), redis_client, unique)
    snapshot_in(tmp_path)
    redis_client.set(Keys(unique).recovery, "someone-else")
    with pytest.raises(ConfigError, match="another deployment"):
        claim_recovery_dir(str(tmp_path), redis_client, unique)


def test_redis_that_lost_its_data_is_refused_unless_recovered(
    tmp_path: Path, redis_client: redis.Redis, unique: str
) -> None:
    first = claim_recovery_dir(str(tmp_path), redis_client, unique)
    snapshot_in(tmp_path)
    redis_client.delete(Keys(unique).recovery)  # Redis restarted without persistence
    with pytest.raises(RedisDataLost, match="--recover-redis"):
        claim_recovery_dir(str(tmp_path), redis_client, unique)
    assert redis_client.get(Keys(unique).recovery) is None  # refusing changed nothing
    rebuilt: list[int] = []
    lines: list[str] = []

    def recover() -> int:
        rebuilt.append(7)
        return 7

    marker = claim_recovery_dir(
        str(tmp_path), redis_client, unique, recover=recover, say=lines.append
    )
    assert rebuilt == [7]
    assert marker.token == first.token
    assert "7 sent action(s) remembered" in lines[0]
    assert not list(tmp_path.glob("part-*.sqlite3"))  # the events topic is read from its start
    marker.check()


def test_the_marker_catches_redis_coming_back_empty(redis_client: redis.Redis, unique: str) -> None:
    redis_client.set(Keys(unique).recovery, "t1")
    marker = Marker(redis_client, unique, "t1")
    marker.check()
    redis_client.delete(Keys(unique).recovery)
    with pytest.raises(RedisDataLost, match="came back without this deployment's data"):
        marker.check()
