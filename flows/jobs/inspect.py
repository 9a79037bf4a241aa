"""``tetik state ID``: a shopper's state as the engine left it in Redis.

``ID`` is a user id, an anonymous id that was never linked, or a linked
anonymous id: then the state shown is its user's (found through the links
hash of the anonymous id's shard, :mod:`flows.pipeline.identity`), with the
ids that user merged (``merged``) and the id asked for (``linked_from``).

``interest`` lists the shopper's entries in the catalog's interest index
(SPEC section 10) as the fan-out reads them from Redis: per product, why
(``cart``, ``favorite``, ``view``), the price seen and until when (ms).
"""

from __future__ import annotations

from typing import Any

from engine.errors import ConfigError
from engine.interest import products_of
from engine.state import UserState, to_view
from flows.pipeline.identity import read_links
from flows.retry import RedisClient, connect
from flows.settings import from_env
from flows.stores.catalog import read_interest
from flows.stores.keys import Keys
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
    return state_view(connect(url), settings.keys, user)


def state_view(client: RedisClient, keys: Keys, identity: str) -> dict[str, Any] | None:
    """The view of ``identity``'s state, or of the user a linked anonymous id belongs to."""
    shoppers = Shoppers(client, keys)
    state = shoppers.load(identity)
    if state is not None:
        return _view(client, keys, state)
    user = read_links(client, keys, [identity])[identity]
    state = None if user is None else shoppers.load(user)
    if state is None:
        return None
    return {**_view(client, keys, state), "linked_from": identity}


def _view(client: RedisClient, keys: Keys, state: UserState) -> dict[str, Any]:
    """The state's view with its interest entries (every product it may be interested
    in: its cart, its favorites and what it viewed in the last 30 days)."""
    products = products_of(state, state.last_seen)
    entries = read_interest(client, keys, state.key, products)
    interest = {
        pid: {"via": entry.via, "price": entry.price, "until": entry.expires}
        for pid, entry in entries.items()
    }
    return {**to_view(state), "interest": interest}
