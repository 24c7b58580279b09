"""The dialogue data the service works with: conversation turns and few-shot examples."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier turn of the conversation, as the client or the example bank reports it."""

    utterance: str
    plan: str | None = None
    agent_reply: str | None = None


@dataclass(frozen=True, slots=True)
class Example:
    """A few-shot example: an utterance, its gold plan, and the turn before it, if any."""

    id: str
    utterance: str
    plan: str
    previous: Turn | None = None
