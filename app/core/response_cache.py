"""A cache of plan responses, so that a repeated request skips the models entirely.

The key covers everything that decides the response. First the utterance and
the context turns, Unicode-normalized with runs of whitespace collapsed. Case
is kept, because names in the request become literals in the plan. Then a
namespace that changes with the models, the prompt version, the example bank,
the calibration and the planner settings: a new deployment of any of those
starts with an empty cache instead of serving old responses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from app.domain.dialogue import Turn

__all__ = [
    "MemoryResponseCache",
    "RedisResponseCache",
    "ResponseCache",
    "cache_namespace",
    "request_key",
]

logger = logging.getLogger(__name__)


class ResponseCache(Protocol):
    """Stores response bodies by request key for a fixed time."""

    backend: str

    async def get(self, key: str) -> dict[str, Any] | None:
        """Return the stored body, or None when absent, expired or unreadable."""
        ...

    async def put(self, key: str, body: Mapping[str, Any]) -> None: ...


def cache_namespace(parts: Mapping[str, object]) -> str:
    """Return a short digest of what, besides the request, decides a response."""
    encoded = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def request_key(namespace: str, utterance: str, context: Iterable[Turn]) -> str:
    """Return the cache key of a request within `namespace`."""
    turns = [
        [_normalized(turn.utterance), _normalized(turn.plan), _normalized(turn.agent_reply)]
        for turn in context
    ]
    encoded = json.dumps([_normalized(utterance), turns], ensure_ascii=False).encode()
    return f"{namespace}:{hashlib.sha256(encoded).hexdigest()}"


def _normalized(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFKC", text or "").split())


class MemoryResponseCache:
    """This process's cache: least recently used entries go first when it is full."""

    backend = "memory"

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, body = entry
        if time.monotonic() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return dict(body)

    async def put(self, key: str, body: Mapping[str, Any]) -> None:
        self._entries[key] = (time.monotonic() + self.ttl_s, dict(body))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisResponseCache:
    """A cache shared by every replica; Redis expires the entries.

    When Redis fails, a lookup is a miss and a store is skipped: the models
    handle the request, only slower. The client belongs to the caller.
    """

    backend = "redis"

    def __init__(
        self, client: redis.Redis, ttl_s: float, *, key_prefix: str, retry_s: float = 1.0
    ) -> None:
        self.client = client
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.prefix = f"{key_prefix}:cache:"
        # After a failure, Redis is left alone this long: a hung server would otherwise
        # cost every request two timeouts.
        self.retry_s = retry_s
        self._failing = False
        self._retry_at = 0.0

    async def get(self, key: str) -> dict[str, Any] | None:
        if self._resting():
            return None
        try:
            stored = await self.client.get(self.prefix + key)
        except (RedisError, OSError) as error:
            self._failed("get", error)
            return None
        self._recovered()
        if stored is None:
            return None
        try:
            body = json.loads(stored)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            logger.warning("unreadable cache entry ignored key=%s", key)
            return None
        return body

    async def put(self, key: str, body: Mapping[str, Any]) -> None:
        if self._resting():
            return
        encoded = json.dumps(body, separators=(",", ":"))
        try:
            await self.client.set(self.prefix + key, encoded, px=self.ttl_ms)
        except (RedisError, OSError) as error:
            self._failed("put", error)
        else:
            self._recovered()

    def _resting(self) -> bool:
        return self._failing and time.monotonic() < self._retry_at

    def _failed(self, operation: str, error: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_s
        if not self._failing:
            logger.warning(
                "response cache unavailable, requests go to the models operation=%s error=%s",
                operation,
                f"{type(error).__name__}: {error}",
            )
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.info("response cache reachable again")
        self._failing = False
