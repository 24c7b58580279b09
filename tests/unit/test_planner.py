"""The planner's own logic, with an in-process backend whose context is a character budget."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from app.backends.base import BackendStatus, ChatMessage, Completion, ScoredCompletion
from app.backends.errors import PromptTooLongError
from app.core.policy_store import LocalPolicyStore
from app.domain.calibration import Calibration
from app.domain.delegation import DelegationConfig, DelegationPolicy
from app.domain.dialogue import Example, Turn
from app.domain.example_bank import bank_arguments
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
        policy=LocalPolicyStore(DelegationPolicy(DelegationConfig(min_samples=1, window_size=10))),
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


BOSS = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"
TEAM = "( Yield :output ( FindTeamOf :recipient ( toRecipient ( CurrentUser ) ) ) )"
LUNCH = '( Yield :output ( CreateLunch :with # ( PersonName " Jennifer " ) ) )'
BANK = [
    Example("boss", "who is my boss", BOSS),
    Example("team", "who is on my team", TEAM),
    Example("lunch", "lunch with Jennifer", LUNCH),
    Example(
        "yes-after-create", "yes", "( Confirm )", Turn("book lunch", None, "Does this look ok?")
    ),
    Example(
        "yes-after-delete", "yes", "( ConfirmDelete )", Turn("cancel it", None, "Delete this?")
    ),
]


class ScoringBackend:
    """Replies `reply` and scores each candidate by a fixed log-probability per plan."""

    backend = "scoring"
    model_name = "scoring-model"

    def __init__(self, reply: str, scores: dict[str, float]) -> None:
        self.reply = reply
        self.scores = scores
        self.scored: list[list[str]] = []

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        return Completion(text=self.reply, token_logprobs=(-0.5,), stop_reason="stop")

    async def complete_and_score(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, candidates: Sequence[str]
    ) -> ScoredCompletion:
        self.scored.append(list(candidates))
        return ScoredCompletion(
            await self.complete(messages, max_tokens=max_tokens),
            tuple((self.scores.get(plan, -3.0),) * 2 for plan in candidates),
        )

    async def probe(self) -> BackendStatus:
        return BackendStatus(self.backend, self.model_name, True)

    async def aclose(self) -> None:
        pass


def bank_planner(small, **options) -> Planner:
    settings = dict(
        index=ExampleIndex(BANK),
        small=small,
        large=None,
        policy=LocalPolicyStore(DelegationPolicy(DelegationConfig(min_samples=1, window_size=10))),
        few_shot_k=4,
        small_max_tokens=64,
        large_max_tokens=64,
        known_functions=frozenset(
            {
                "Yield",
                "FindManager",
                "FindTeamOf",
                "toRecipient",
                "CurrentUser",
                "CreateLunch",
                "Confirm",
                "ConfirmDelete",
            }
        ),
        bank_answer_similarity=0.95,
        candidate_count=3,
    )
    settings.update(options)
    return Planner(**settings)


@pytest.mark.anyio
async def test_bank_answer_skips_model():
    small = ScoringBackend(TEAM, {})

    result = await bank_planner(small).generate("Who is my BOSS?")

    assert small.scored == []
    assert result.origin == "bank_answer"
    assert result.model == "bank"
    assert result.origin_example_id == "boss"
    assert result.plan == BOSS
    assert result.confidence_source == "retrieval"


@pytest.mark.anyio
async def test_ranked_candidates_carry_the_request_names():
    small = ScoringBackend(TEAM, {})

    await bank_planner(small).generate("Lunch with Beck")

    assert '( Yield :output ( CreateLunch :with # ( PersonName " Beck " ) ) )' in small.scored[0]


@pytest.mark.anyio
async def test_short_reply_follows_previous_turn():
    context = [Turn("cancel my meeting", None, "Delete this?")]

    result = await bank_planner(ScoringBackend(TEAM, {})).generate("Yes", context)

    assert result.plan == "( ConfirmDelete )"


@pytest.mark.anyio
async def test_likelier_example_plan_beats_generated_plan():
    small = ScoringBackend(TEAM, {BOSS: -0.1, TEAM: -2.0})

    result = await bank_planner(small).generate("who is my manager")

    assert BOSS in small.scored[0]
    assert result.plan == BOSS
    assert result.origin == "ranked_example"
    assert result.origin_example_id == "boss"
    assert result.generated_plan == TEAM
    assert result.signals["margin"] == pytest.approx(3.8)  # two tokens, 1.9 nats apart each


@pytest.mark.anyio
async def test_generated_plan_kept_when_likeliest():
    small = ScoringBackend(TEAM, {BOSS: -2.0, TEAM: -0.1})

    result = await bank_planner(small).generate("who is my manager")

    assert result.plan == TEAM
    assert result.origin == "generated"
    assert result.confidence_source == "logprobs"
    assert result.confidence == pytest.approx(math.exp(-0.1))


@pytest.mark.anyio
async def test_unusable_generation_uses_nearest_example_and_is_delegated():
    small = CharacterBudgetBackend(budget=10**6)
    small_reply = "no plan here"

    async def complete(messages, *, max_tokens):
        return Completion(text=small_reply, token_logprobs=(-0.1,), stop_reason="stop")

    small.complete = complete  # type: ignore[method-assign]

    # Nine earlier requests, none delegated: the budget has room for this one.
    warm = DelegationPolicy(DelegationConfig(min_samples=1, window_size=10), [0.9] * 9)

    result = await bank_planner(small, policy=LocalPolicyStore(warm)).generate("who is my manager")

    assert result.plan == BOSS
    assert result.origin == "nearest_example"
    assert result.decision is not None and result.decision.reason == "invalid_plan"
    assert result.confidence == 0.0


@pytest.mark.anyio
async def test_calibration_sets_confidence_and_is_named():
    calibration = Calibration(
        version="2026-12-04-abcdef12",
        features=("similarity",),
        coefficients=(2.0,),
        intercept=0.0,
        means=(0.5,),
        scales=(0.25,),
    )
    small = ScoringBackend(TEAM, {BOSS: -0.1})

    result = await bank_planner(small, calibration=calibration).generate("who is my manager")

    expected = 1 / (1 + math.exp(-2.0 * (result.features["similarity"] - 0.5) / 0.25))
    assert result.confidence == pytest.approx(expected)
    assert result.confidence_source == "calibrated"
    assert result.calibration_version == "2026-12-04-abcdef12"
    assert result.signals["calibrated"] == pytest.approx(expected)


@pytest.mark.anyio
async def test_generation_limit_follows_longest_candidate():
    limits: list[int] = []
    small = ScoringBackend(TEAM, {})
    original = small.complete

    async def complete(messages, *, max_tokens):
        limits.append(max_tokens)
        return await original(messages, max_tokens=max_tokens)

    small.complete = complete  # type: ignore[method-assign]

    await bank_planner(small, small_max_tokens=384).generate("who is my manager")

    assert limits == [64]  # every candidate plan is under 128 characters


def test_check_plan_rejects_keyword_without_value():
    planner = bank_planner(CharacterBudgetBackend(budget=10**6))

    problem = planner.check_plan("( Yield :output ( FindManager :recipient ) )")

    assert "FindManager argument :recipient without a value" in problem


def test_check_plan_rejects_unseen_argument():
    planner = bank_planner(
        CharacterBudgetBackend(budget=10**6), known_arguments=bank_arguments(BANK)
    )

    problem = planner.check_plan("( Yield :output ( FindManager :launch ( CurrentUser ) ) )")
    passing = planner.check_plan(BOSS)

    assert "FindManager :launch" in problem
    assert passing is None
