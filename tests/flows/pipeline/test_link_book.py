"""The process's link book: what it may answer without Redis (its staleness rule)."""

from __future__ import annotations

from flows.pipeline.link_book import LinkBook, look_up
from flows.stores.keys import shard_of

SHARDS = 8


def anon_on(shard: int, prefix: str = "dev") -> str:
    """An anonymous id that lives on ``shard``."""
    return next(f"{prefix}{n}" for n in range(10_000) if shard_of(f"{prefix}{n}", SHARDS) == shard)


class Redis:
    """The links hash as Redis holds it, counting the ids read."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}
        self.read: list[str] = []

    def __call__(self, ids: list[str]) -> dict[str, str | None]:
        self.read.extend(ids)
        return {anon: self.links.get(anon) for anon in ids}


def test_not_linked_is_remembered_only_for_the_process_own_shards() -> None:
    book, redis = LinkBook(), Redis()
    book.own(1, SHARDS)
    mine, theirs = anon_on(1), anon_on(2)
    assert look_up(book, [mine, theirs], redis) == {mine: None, theirs: None}
    assert look_up(book, [mine, theirs], redis) == {mine: None, theirs: None}
    assert redis.read == [mine, theirs, theirs]  # another process's shard: asked each time


def test_without_an_owned_shard_not_linked_is_never_remembered() -> None:
    book, redis = LinkBook(), Redis()
    anon = anon_on(3)
    look_up(book, [anon], redis)
    look_up(book, [anon], redis)
    assert redis.read == [anon, anon]


def test_a_link_read_from_redis_is_final() -> None:
    book, redis = LinkBook(), Redis()
    anon = anon_on(2)
    redis.links[anon] = "carol"
    assert look_up(book, [anon], redis) == {anon: "carol"}
    assert look_up(book, [anon], redis) == {anon: "carol"}
    assert redis.read == [anon]


def test_a_local_commit_replaces_not_linked_at_once() -> None:
    book, redis = LinkBook(), Redis()
    book.own(1, SHARDS)
    anon = anon_on(1)
    assert look_up(book, [anon], redis) == {anon: None}
    redis.links[anon] = "carol"  # the shard's commit, then what it tells the book
    book.linked([(anon, "carol")])
    assert look_up(book, [anon], redis) == {anon: "carol"}
    assert redis.read == [anon]


def test_a_read_that_raced_a_commit_is_not_remembered_as_not_linked() -> None:
    book = LinkBook()
    book.own(1, SHARDS)
    anon, other = anon_on(1), anon_on(1, "tab")

    def racing(ids: list[str]) -> dict[str, str | None]:
        answer: dict[str, str | None] = dict.fromkeys(ids)  # Redis answered before the commit
        book.linked([(other, "dave")])  # a commit (of any link) before the answer is learnt
        return answer

    assert look_up(book, [anon], racing) == {anon: None}
    redis = Redis()
    assert look_up(book, [anon, other], redis) == {anon: None, other: "dave"}
    assert redis.read == [anon]  # asked again: the racing "not linked" was dropped


def test_the_book_is_bounded() -> None:
    book, redis = LinkBook(size=2), Redis()
    book.own(0, SHARDS)
    ids = [f"dev{n}" for n in range(5)]
    for anon in ids:
        redis.links[anon] = "u"
    look_up(book, ids, redis)
    redis.read.clear()
    look_up(book, ids, redis)
    assert len(redis.read) == 3  # two remembered, the three older read again
