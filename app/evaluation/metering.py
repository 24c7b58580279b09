"""A backend wrapper that records each model call of an evaluation, for token counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.backends.base import (
    BackendStatus,
    CandidateScorer,
    ChatMessage,
    Completion,
    ModelBackend,
    ScoredCompletion,
)

__all__ = ["MeteredBackend", "MeteredCall", "MeteredScoringBackend", "metered"]


@dataclass
class MeteredCall:
    """One model call: the prompt size in characters and the completion, None if it failed."""

    prompt_chars: int
    completion: Completion | None = None


class MeteredBackend:
    """A ModelBackend wrapper that records every call's prompt size and completion."""

    def __init__(self, inner: ModelBackend) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.model_name = inner.model_name
        self.calls: list[MeteredCall] = []

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        call = MeteredCall(prompt_chars=sum(len(message.content) for message in messages))
        self.calls.append(call)
        call.completion = await self.inner.complete(messages, max_tokens=max_tokens)
        return call.completion

    async def probe(self) -> BackendStatus:
        return await self.inner.probe()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def take_calls(self) -> list[MeteredCall]:
        """Return the calls since the last take, failed ones included, and forget them."""
        calls, self.calls = self.calls, []
        return calls


class MeteredScoringBackend(MeteredBackend):
    """A MeteredBackend for a backend that also scores candidate replies."""

    def __init__(self, inner: ModelBackend) -> None:
        if not isinstance(inner, CandidateScorer):
            raise TypeError(f"{type(inner).__name__} cannot score candidates")
        super().__init__(inner)
        self.scorer = inner

    async def complete_and_score(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, candidates: Sequence[str]
    ) -> ScoredCompletion:
        call = MeteredCall(prompt_chars=sum(len(message.content) for message in messages))
        self.calls.append(call)
        scored = await self.scorer.complete_and_score(
            messages, max_tokens=max_tokens, candidates=candidates
        )
        call.completion = scored.completion
        return scored


def metered(inner: ModelBackend) -> MeteredBackend:
    """Wrap a backend in the meter that offers the same capabilities."""
    if isinstance(inner, CandidateScorer):
        return MeteredScoringBackend(inner)
    return MeteredBackend(inner)
