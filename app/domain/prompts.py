"""Prompts for both models: a system message, few-shot examples and the request."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from app.backends.base import ChatMessage
from app.domain.dialogue import Example, Turn

__all__ = ["PROMPT_VERSION", "build_messages", "system_prompt"]

_PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"

# Raise when the wording or layout of the prompt changes: caches and evaluation
# reports key on it.
PROMPT_VERSION = "1"


@lru_cache(maxsize=1)
def system_prompt() -> str:
    """Return the system message shared by both models."""
    return (_PROMPT_DIR / "system.txt").read_text(encoding="utf-8").strip()


def _format_request(utterance: str, context: Sequence[Turn]) -> str:
    lines: list[str] = []
    for turn in context:
        lines.append(f"Previous request: {turn.utterance}")
        if turn.plan:
            lines.append(f"Previous plan: {turn.plan}")
        if turn.agent_reply:
            lines.append(f"Assistant replied: {turn.agent_reply}")
    lines.append(f"Request: {utterance}")
    return "\n".join(lines)


def build_messages(
    utterance: str, context: Sequence[Turn], examples: Sequence[Example]
) -> list[ChatMessage]:
    """Build the chat prompt: the system message, one user/assistant pair per example, the request.

    Examples come most similar first; they are placed most similar last, next
    to the request, where small models attend to them most.
    """
    messages = [ChatMessage("system", system_prompt())]
    for example in reversed(examples):
        example_context = [example.previous] if example.previous else []
        messages.append(ChatMessage("user", _format_request(example.utterance, example_context)))
        messages.append(ChatMessage("assistant", example.plan))
    messages.append(ChatMessage("user", _format_request(utterance, context)))
    return messages
