"""The interface every model backend implements, small or large, local or remote."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat prompt."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Completion:
    """What a backend generated for one prompt.

    `token_logprobs` contains the natural-log probability of each generated token,
    in order, when the backend reports them, and is None otherwise.
    """

    text: str
    token_logprobs: tuple[float, ...] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ScoredCompletion:
    """A completion, and the log probabilities the model gives each candidate reply.

    `candidate_logprobs[i]` contains the natural-log probability of each token of
    candidate i followed by the end of the reply, or None when the candidate
    does not fit in the context window.
    """

    completion: Completion
    candidate_logprobs: tuple[tuple[float, ...] | None, ...]


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """The result of a readiness probe."""

    backend: str
    model_name: str
    ready: bool
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ModelBackend(Protocol):
    """A chat model that turns a prompt into a completion without blocking the event loop."""

    backend: str  # the kind of backend: "ollama", "llama-cpp", "bedrock"
    model_name: str  # the model as the backend names it

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        """Generate a reply to `messages`.

        Raises a BackendError subclass on any failure: never a vendor exception.
        """
        ...

    async def probe(self) -> BackendStatus:
        """Check, cheaply, that the backend can serve requests now."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and loaded models."""
        ...


@runtime_checkable
class CandidateScorer(Protocol):
    """A backend that can also score given replies to the same prompt by their likelihood.

    Only a model that runs in-process offers this: a server API such as Ollama's
    returns log probabilities of generated tokens only.
    """

    async def complete_and_score(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, candidates: Sequence[str]
    ) -> ScoredCompletion:
        """Generate a reply to `messages`, then score each candidate reply to the same prompt.

        Raises a BackendError subclass on any failure, like complete().
        """
        ...
