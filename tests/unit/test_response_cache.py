"""The response cache's keys and its in-process store."""

from __future__ import annotations

import asyncio
import time

from app.core.response_cache import MemoryResponseCache, cache_namespace, request_key
from app.domain.dialogue import Turn

NAMESPACE = cache_namespace({"small_model": "a", "prompt_version": "1"})


def test_key_ignores_spacing_and_width():
    assert request_key(NAMESPACE, "Lunch  with\tJen ", []) == request_key(
        NAMESPACE, "Lunch with Jen", []
    )
    assert request_key(NAMESPACE, "Lunch at ９", []) == request_key(NAMESPACE, "Lunch at 9", [])


def test_key_keeps_case():
    assert request_key(NAMESPACE, "Lunch with Jen", []) != request_key(
        NAMESPACE, "lunch with jen", []
    )


def test_key_depends_on_context():
    turn = Turn("Who is Jen?", "( Yield :output ( FindManager ) )", "Jen is on your team.")

    assert request_key(NAMESPACE, "Her manager?", [turn]) != request_key(
        NAMESPACE, "Her manager?", []
    )


def test_namespace_depends_on_models():
    other = cache_namespace({"small_model": "b", "prompt_version": "1"})

    assert request_key(NAMESPACE, "Lunch", []) != request_key(other, "Lunch", [])


def test_memory_cache_returns_copy():
    cache = MemoryResponseCache(ttl_s=60, max_entries=10)
    asyncio.run(cache.put("k", {"plan": "( Yield )"}))

    first = asyncio.run(cache.get("k"))
    first["plan"] = "changed"

    assert asyncio.run(cache.get("k")) == {"plan": "( Yield )"}


def test_memory_cache_expires():
    cache = MemoryResponseCache(ttl_s=0.05, max_entries=10)
    asyncio.run(cache.put("k", {"plan": "( Yield )"}))
    time.sleep(0.06)

    assert asyncio.run(cache.get("k")) is None
    assert len(cache) == 0


def test_memory_cache_drops_least_recently_used():
    cache = MemoryResponseCache(ttl_s=60, max_entries=2)
    asyncio.run(cache.put("a", {"n": 1}))
    asyncio.run(cache.put("b", {"n": 2}))
    asyncio.run(cache.get("a"))
    asyncio.run(cache.put("c", {"n": 3}))

    assert asyncio.run(cache.get("b")) is None
    assert asyncio.run(cache.get("a")) == {"n": 1}
