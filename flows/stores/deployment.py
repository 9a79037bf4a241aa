"""Which Redis the engine belongs to, and what happens when Redis comes back empty.

Rules of this interface:

* A deployment is one Redis or Redis Cluster (with its key prefix) plus its
  Kafka topics. Its marker is ``{prefix}:recovery`` in Redis
  (:attr:`flows.stores.keys.Keys.recovery`): a random token made on the first
  start. The recovery directory keeps the same token in ``tetik.json``, so
  Bytewax snapshots (offsets, resident users, pending timers) are only ever
  resumed against the servers they were taken with.
* :func:`claim_recovery_dir` decides at start:

  - a directory without snapshots is adopted (it gets the token);
  - snapshots with the same token as Redis: resume;
  - snapshots, and Redis holds another token: the directory belongs to
    another deployment: refused with one line (use an empty directory);
  - snapshots, and Redis holds no token at all: **Redis lost its data**
    (restarted without persistence, flushed, or replaced). Shoppers' states,
    timers and outboxes are gone with it, and the snapshots' offsets would
    skip the events that built them. Refused with one line, unless the
    operator passes ``--recover-redis``: then every action id in the
    ``actions`` topic is remembered as sent
    (:func:`flows.stores.emissions.rebuild_emitted`), the snapshots are
    dropped so the engine re-reads the events topic from its start (as far
    as its retention keeps), re-deriving every state and timer as
    ``tetik replay`` would, and the actions it calls for again are not sent
    twice. Events the topic no longer keeps are lost with Redis.

* :meth:`Marker.check` runs whenever Redis answers again after a fault
  (:func:`flows.retry.retrying`'s ``on_back``): a missing token means Redis
  came back empty while the engine ran, and :class:`RedisDataLost` stops the
  engine before it writes anything more. Configure Redis with AOF
  persistence (``appendonly yes``) so a restart keeps the data.
* Recovery files are Bytewax's SQLite snapshots, whose values Bytewax
  pickles: anyone who can write the directory can run code in the engine at
  its next start. The directory is made mode 0700 and its files 0600 (the
  engine runs with umask 077); keep it owned by the engine's user.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from engine.errors import ConfigError, TetikError
from flows.stores.keys import Keys


class RedisDataLost(TetikError):
    """Redis no longer holds this deployment's marker: it lost its data."""


class Marker:
    """The deployment's token in Redis, checked after every Redis fault."""

    def __init__(self, client: redis.Redis, prefix: str, token: str) -> None:
        self._client = client
        self._key = Keys(prefix).recovery
        self.token = token

    def check(self) -> None:
        """Raise RedisDataLost when Redis no longer holds the token."""
        raw = self._client.get(self._key)
        found = raw.decode() if isinstance(raw, bytes) else None
        if found != self.token:
            raise RedisDataLost(
                f"Redis came back without this deployment's data ({self._key} is "
                f"{'missing' if found is None else 'another token'}): it restarted without "
                "persistence or was flushed; the engine stopped before writing anything more. "
                "Restore Redis, or restart with `tetik run --recover-redis` (see README, "
                "Failure modes)"
            )


def secure(directory: Path) -> None:
    """Mode 0700 on the directory and 0600 on its files (snapshots hold profile data)."""
    directory.chmod(0o700)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o600)


def claim_recovery_dir(
    directory: str,
    client: redis.Redis,
    prefix: str,
    *,
    recover: Callable[[], int] | None = None,
    say: Callable[[str], None] = print,
) -> Marker:
    """Tie ``directory`` to this deployment (see the module rules); its marker."""
    path = Path(directory)
    key = Keys(prefix).recovery
    marker_file = path / "tetik.json"
    if not any(path.glob("part-*.sqlite3")):
        client.set(key, os.urandom(8).hex(), nx=True)
        token = _token(client, key)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        marker_file.write_bytes(orjson.dumps({"token": token, "prefix": prefix}))
        secure(path)
        return Marker(client, prefix, token)
    found = orjson.loads(marker_file.read_bytes()).get("token") if marker_file.exists() else None
    current = client.get(key)
    if current is None and found is not None:
        return _recover_lost_redis(directory, client, prefix, found, recover, say)
    if current is None or found != _token(client, key):
        raise ConfigError(
            f"recovery directory {directory} holds snapshots of another deployment (its "
            "offsets and states do not belong to these servers); pass an empty "
            "--recovery-dir, or delete that one if its deployment is gone"
        )
    secure(path)
    return Marker(client, prefix, str(found))


def _recover_lost_redis(
    directory: str,
    client: redis.Redis,
    prefix: str,
    token: str,
    recover: Callable[[], int] | None,
    say: Callable[[str], None],
) -> Marker:
    if recover is None:
        raise RedisDataLost(
            f"Redis lost this deployment's data ({Keys(prefix).recovery} is missing, while "
            f"{directory} holds snapshots): resuming would send the last actions again. "
            "Restore Redis from its AOF/RDB, or run `tetik run --recover-redis` to rebuild "
            "the states from the events topic without sending again what was sent (see README, "
            "Failure modes)"
        )
    rebuilt = recover()
    for snapshot in Path(directory).glob("part-*.sqlite3"):
        snapshot.unlink()  # their offsets would skip the events the lost states came from
    client.set(Keys(prefix).recovery, token)
    say(
        f"Redis had lost its data: {rebuilt} sent action(s) remembered; re-reading the "
        "events topic from its start to rebuild the shoppers' states"
    )
    secure(Path(directory))
    return Marker(client, prefix, token)


def _token(client: redis.Redis, key: str) -> str:
    raw = client.get(key)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def current_marker(client: redis.Redis, prefix: str) -> Marker | None:
    """The deployment's marker as Redis holds it now (None before the first start)."""
    raw = client.get(Keys(prefix).recovery)
    return Marker(client, prefix, raw.decode()) if isinstance(raw, bytes) else None
