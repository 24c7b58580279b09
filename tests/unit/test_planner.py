"""The planner's own logic, with an in-process backend whose context is a character budget."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.backends.base import BackendStatus, ChatMessage, Completion
from app.backends.errors import PromptTooLongError
from app.domain.delegation import DelegationConfig, DelegationPolicy
from app.domain.dialogue import Example, Turn
from app.domain.retrieval import ExampleIndex
from app.planner import Planner

PLAN = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"


class CharacterBudgetBackend:
    """Answers PLAN while the prompt has at most `budget` characters, else rejects it."""

    backend = "budget"
    model_name = "budget-model"

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.prompts: list[list[ChatMessage]] = []

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        self.prompts.append(list(messages))
        size = sum(len(message.content) for message in messages)
        if size > self.budget:
            raise PromptTooLongError(
                self.backend, "too long", prompt_tokens=size, limit=self.budget
            )
        return Completion(text=PLAN, token_logprobs=(-0.01,), stop_reason="stop")

    async def probe(self) -> BackendStatus:
        return BackendStatus(self.backend, self.model_name, True)

    async def aclose(self) -> None:
        pass


def make_planner(small: CharacterBudgetBackend) -> Planner:
    examples = [
        Example(f"e{i}", f"who is the manager of person {i} " + "padding " * 40, PLAN)
        for i in range(8)
    ]
    return Planner(
        index=ExampleIndex(examples),
        small=small,
        large=None,
        policy=DelegationPolicy(DelegationConfig(min_samples=1, window_size=10)),
        few_shot_k=8,
        small_max_tokens=64,
        large_max_tokens=64,
    )


@pytest.mark.anyio
async def test_long_prompt_drops_examples():
    small = CharacterBudgetBackend(budget=2500)

    result = await make_planner(small).generate("who is the manager of person 3")

    sizes = [sum(len(m.content) for m in prompt) for prompt in small.prompts]
    assert result.plan == PLAN
    assert len(small.prompts) > 1
    assert sizes == sorted(sizes, reverse=True)
    assert len(result.few_shot) == (len(small.prompts[-1]) - 2) // 2
    assert result.few_shot[0].example.id == "e3"


@pytest.mark.anyio
async def test_long_context_is_shortened_last():
    small = CharacterBudgetBackend(budget=1500)
    context = [Turn("book lunch", "( " + "Plan " * 400 + ")", "Done.")] * 3

    result = await make_planner(small).generate("who is the manager of person 3", context)

    final_prompt = small.prompts[-1]
    assert result.plan == PLAN
    assert result.few_shot == []
    assert "Previous plan" not in final_prompt[-1].content
    assert final_prompt[-1].content.count("Previous request: book lunch") == 2
