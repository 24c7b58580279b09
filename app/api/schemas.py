"""Request and response bodies of the HTTP API, with the limits the OpenAPI schema states."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

UTTERANCE_MAX_CHARS = 1000
CONTEXT_MAX_TURNS = 10
CONTEXT_TEXT_MAX_CHARS = 4000  # for each plan or reply of a context turn

_EXAMPLE_PLAN = (
    "( Yield :output ( CreateCommitEventWrapper :event ( CreatePreflightEventWrapper "
    ":constraint ( Constraint[Event] :start ( ?= ( DateAtTimeWithDefaults :date ( Tomorrow ) "
    ':time ( NumberPM :number # ( Number 12 ) ) ) ) :subject ( ?= # ( String " lunch " ) ) ) ) ) )'
)


# The schema states the rule that _not_blank checks; the validator, not a pattern
# constraint, enforces it, so that the 422 names the rule in words.
_HAS_LETTER_OR_DIGIT = {"pattern": r"[^\W_]"}


def _not_blank(value: str) -> str:
    # Blank or invisible text (zero-width spaces) would still cost a full generation.
    if not any(character.isalnum() for character in value):
        raise ValueError("must contain at least one letter or digit")
    return value


class ContextTurn(BaseModel):
    """An earlier turn of the same conversation, oldest first."""

    model_config = ConfigDict(extra="forbid")

    utterance: str = Field(
        min_length=1,
        max_length=UTTERANCE_MAX_CHARS,
        json_schema_extra=_HAS_LETTER_OR_DIGIT,
        description="What the user said in that turn.",
        examples=["Schedule lunch with Jennifer tomorrow at noon."],
    )
    plan: str | None = Field(
        None,
        max_length=CONTEXT_TEXT_MAX_CHARS,
        description="The plan that was executed for that turn, when known.",
        examples=[_EXAMPLE_PLAN],
    )
    agent_reply: str | None = Field(
        None,
        max_length=CONTEXT_TEXT_MAX_CHARS,
        description="What the assistant answered in that turn, when known.",
        examples=["I've put lunch on your calendar for tomorrow at 12:00 PM."],
    )

    _check_utterance = field_validator("utterance")(_not_blank)


class PlanRequest(BaseModel):
    """An utterance to turn into a plan, with the conversation so far."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"utterance": "Schedule lunch with Jennifer and her team tomorrow at noon."},
                {
                    "utterance": "Make it an hour later.",
                    "context": [
                        {
                            "utterance": "Schedule lunch tomorrow at noon.",
                            "plan": _EXAMPLE_PLAN,
                            "agent_reply": "I've put lunch on your calendar for tomorrow.",
                        }
                    ],
                },
            ]
        },
    )

    utterance: str = Field(
        min_length=1,
        max_length=UTTERANCE_MAX_CHARS,
        json_schema_extra=_HAS_LETTER_OR_DIGIT,
        description=(
            f"What the user said: 1 to {UTTERANCE_MAX_CHARS} characters, with at least one "
            "letter or digit."
        ),
        examples=["Schedule lunch with Jennifer and her team tomorrow at noon."],
    )
    context: list[ContextTurn] = Field(
        default_factory=list,
        max_length=CONTEXT_MAX_TURNS,
        description=(
            f"Earlier turns of the conversation, oldest first, at most {CONTEXT_MAX_TURNS}. "
            "Follow-ups such as 'make it an hour later' need them."
        ),
    )

    _check_utterance = field_validator("utterance")(_not_blank)


class DelegationInfo(BaseModel):
    """The delegation decision and the inputs that produced it."""

    wanted: bool = Field(
        description="Whether the policy chose to ask the large model.", examples=[False]
    )
    status: Literal["not_wanted", "completed", "unavailable", "failed"] = Field(
        description=(
            "not_wanted: the small plan stands. completed: the large model wrote the plan. "
            "unavailable: delegation was wanted but no large model could be reached "
            "(not configured, no credentials, throttled); the small plan is returned. "
            "failed: the large model answered with an error or no plan; the small plan "
            "is returned."
        ),
        examples=["not_wanted"],
    )
    reason: str | None = Field(
        description=(
            "low_confidence, invalid_plan, above_threshold or budget_exhausted; "
            "null when the small model could not answer at all."
        ),
        examples=["above_threshold"],
    )
    threshold: float | None = Field(
        description="The confidence at or below which a request is delegated.",
        examples=[0.62],
    )
    ratio: float | None = Field(
        description="Share of recent requests delegated, this one included.", examples=[0.18]
    )
    samples: int | None = Field(
        description="Recent confidences the threshold was computed from.", examples=[500]
    )
    warming_up: bool | None = Field(
        description=(
            "True while too few confidences are known for a percentile, so the configured "
            "warm-up threshold applies."
        ),
        examples=[False],
    )
    store: Literal["memory", "redis"] | None = Field(
        None,
        description=(
            "Where the window and budget behind the decision live: redis (shared by every "
            "replica) or memory (this process; also while Redis is unreachable)."
        ),
        examples=["memory"],
    )
    error: str | None = Field(
        None,
        description="Why the large model returned no plan, when it did not.",
        examples=[None],
    )


class FewShotExample(BaseModel):
    """A bank example that was shown to the model."""

    id: str = Field(examples=["default/create-lunch-tomorrow"])
    utterance: str = Field(examples=["Set up lunch with Abby tomorrow at noon."])
    similarity: float = Field(
        description="TF-IDF cosine similarity to the utterance, in [0, 1].", examples=[0.47]
    )


class PlanResponse(BaseModel):
    """The plan for an utterance and how it was produced."""

    request_id: str = Field(
        description="Identifies this request in logs and errors; the X-Request-ID header too.",
        examples=["e010bd23fbe34b93a775d4a51f6cefd9"],
    )
    plan: str = Field(
        description="The plan in normalized Lispress: a space around every bracket and quote.",
        examples=[_EXAMPLE_PLAN],
    )
    plan_valid: bool = Field(
        description=(
            "Always true: a plan that fails the plan check (it does not parse, or uses a "
            "function that no bank example uses) is never returned; the request gets a 502 "
            "instead. Kept for clients written against earlier versions."
        ),
        examples=[True],
    )
    plan_problem: str | None = Field(
        None,
        description="Why the plan failed the plan check, when it did.",
        examples=[None],
    )
    model: Literal["small", "bank", "large"] = Field(
        description=(
            "Which model answered: small, large, or bank when the nearest example was at "
            "least BANK_ANSWER_SIMILARITY similar and no model ran."
        ),
        examples=["small"],
    )
    backend: str = Field(
        description="The backend that answered: ollama, llama-cpp, bedrock or example-bank.",
        examples=["ollama"],
    )
    model_name: str = Field(
        description="The model's name at its backend; for the bank, the example's id.",
        examples=["llama3.1"],
    )
    origin: Literal[
        "generated", "ranked_example", "nearest_example", "bank_answer", "large_model"
    ] = Field(
        description=(
            "generated: the small model wrote the plan. ranked_example: the small model "
            "found a similar example's plan, with the request's names and numbers carried "
            "over, likelier than its own. nearest_example: the small model's plan was "
            "unusable, so the top-voted example plan replaced it. bank_answer: the nearest "
            "example was at least BANK_ANSWER_SIMILARITY similar, so the top-voted plan of "
            "the nearest examples, adapted to the request, was returned without a model. "
            "large_model: the large model wrote it."
        ),
        examples=["generated"],
    )
    origin_example_id: str | None = Field(
        None,
        description="The bank example whose plan was adapted, for ranked_example and bank_answer.",
        examples=[None],
    )
    confidence: float | None = Field(
        ge=0,
        le=1,
        description=(
            "The confidence in the first answer's plan, in [0, 1] (see confidence_source); "
            "null when the small model could not answer."
        ),
        examples=[0.91],
    )
    confidence_source: Literal["calibrated", "logprobs", "retrieval", "invalid_plan"] | None = (
        Field(
            description=(
                "calibrated: the probability that the plan is right, from the calibration "
                "named in `calibration_version`. logprobs: geometric mean of the plan's token "
                "probabilities. retrieval: similarity of the nearest example, used when no "
                "log-probabilities exist. invalid_plan: the small model's output held no "
                "usable plan (0)."
            ),
            examples=["calibrated"],
        )
    )
    calibration_version: str | None = Field(
        None,
        description=(
            "The calibration behind the confidence and so the delegation decision; null "
            "when none is loaded (CALIBRATION_PATH)."
        ),
        examples=["2026-12-04-1a2b3c4d"],
    )
    delegated: bool = Field(
        description="True when the large model wrote the returned plan.", examples=[False]
    )
    delegation: DelegationInfo
    small_plan: str | None = Field(
        None,
        description="The first answer's plan, when the large model overruled it.",
        examples=[None],
    )
    generated_plan: str | None = Field(
        None,
        description=(
            "The small model's own plan, when it wrote one and a different plan was returned."
        ),
        examples=[None],
    )
    generated_plan_problem: str | None = Field(
        None,
        description=(
            "Why the small model's own plan failed the plan check, or why no plan could be "
            "read from its output, when either happened."
        ),
        examples=[None],
    )
    fallback: str | None = Field(
        None,
        description="Set when a failure changed the route: small_model_failed.",
        examples=[None],
    )
    few_shot: list[FewShotExample] = Field(description="The examples in the prompt, nearest first.")
    timings_ms: dict[str, float] = Field(
        description="Milliseconds per stage: retrieval, small_model, large_model, total.",
        examples=[{"retrieval": 0.2, "small_model": 812.5, "total": 813.4}],
    )
    cached: bool = Field(
        False,
        description=(
            "True when the response was served from the response cache: the same request "
            "was answered within RESPONSE_CACHE_TTL_S, and no model ran this time."
        ),
        examples=[False],
    )


class BackendReadiness(BaseModel):
    """One backend's state, as /ready reports it."""

    role: Literal["small", "large"]
    backend: str
    model_name: str
    ready: bool
    detail: str


class PolicyStoreReadiness(BaseModel):
    """The store of the delegation policy's state, as /ready reports it."""

    backend: Literal["memory", "redis"]
    shared: bool = Field(
        description=(
            "True while decisions go through Redis. False with the memory store, and while "
            "Redis is unreachable: the replica then decides with its own state."
        )
    )
    detail: str | None = None


class ReadinessResponse(BaseModel):
    """Readiness of the service and the state of each backend."""

    ready: bool
    backends: list[BackendReadiness]
    examples: int = Field(description="Examples in the loaded bank.")
    delegation_threshold: float
    delegation_ratio: float
    policy_store: PolicyStoreReadiness


class HealthResponse(BaseModel):
    """Liveness: the process is up."""

    status: Literal["ok"] = "ok"


class ProblemDetails(BaseModel):
    """An error, in the RFC 9457 problem-details format."""

    type: str = Field("about:blank", examples=["about:blank"])
    title: str = Field(examples=["Invalid request"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["utterance: String should have at most 1000 characters"])
    request_id: str | None = None
    errors: list[dict[str, str]] | None = Field(
        None, description="For invalid requests: one entry per problem, with field and message."
    )
