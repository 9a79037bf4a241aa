"""``tetik state USER``: a shopper's state as the engine left it in Redis."""

from __future__ import annotations

from typing import Any

from engine.errors import ConfigError
from engine.state import to_view
from flows.retry import connect
from flows.settings import from_env
from flows.stores.states import Shoppers


def read_state(user: str, redis_url: str | None = None) -> dict[str, Any] | None:
    """A user's state as a JSON-ready view, from the Redis the engine writes to."""
    settings = from_env()
    url = redis_url or settings.redis_url
    if not url:
        raise ConfigError(
            "no Redis to read from: set TETIK_REDIS_URL (or pass --redis URL) to the Redis "
            "the engine writes to (`make demo` prints a sample user's state itself)"
        )
    state = Shoppers(connect(url), settings.keys).load(user)
    return None if state is None else to_view(state)
