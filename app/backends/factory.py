"""Build the configured model backends from the settings."""

from __future__ import annotations

import asyncio
import logging

from app.backends.base import ModelBackend
from app.backends.circuit import CircuitBreakerBackend
from app.core.config import Settings

logger = logging.getLogger(__name__)


async def build_small_backend(settings: Settings) -> ModelBackend:
    """Create the small-model backend; loading an embedded model runs off the event loop."""
    if settings.resolved_small_backend == "ollama":
        from app.backends.ollama import OllamaBackend

        if not settings.ollama_host:
            raise ValueError(
                "SMALL_MODEL_BACKEND=ollama needs OLLAMA_HOST, e.g. http://127.0.0.1:11434"
            )
        return CircuitBreakerBackend(
            OllamaBackend(
                host=settings.ollama_host,
                model_name=settings.local_model_name,
                timeout_s=settings.ollama_timeout_s,
                http_transport=settings.ollama_http_transport,
            ),
            failure_threshold=settings.ollama_circuit_failures,
            reset_after_s=settings.ollama_circuit_reset_s,
        )

    # Imported here so that a deployment with Ollama needs no llama.cpp build.
    from app.backends.grammar import LISPRESS_GBNF
    from app.backends.llama_cpp import LlamaCppBackend, default_model_path

    model_path = settings.embedded_model_path or default_model_path()
    logger.info("loading embedded model path=%s", model_path)
    return await asyncio.to_thread(
        LlamaCppBackend,
        model_path=model_path,
        n_ctx=settings.embedded_context_tokens,
        n_threads=settings.embedded_threads,
        timeout_s=settings.embedded_timeout_s,
        grammar=LISPRESS_GBNF if settings.embedded_grammar else None,
    )


def build_large_backend(settings: Settings) -> ModelBackend | None:
    """Create the large-model backend, or None when LARGE_MODEL_BACKEND=none."""
    if settings.large_model_backend == "none":
        return None
    from app.backends.bedrock import BedrockBackend

    return BedrockBackend(
        model_id=settings.bedrock_model_id,
        region=settings.bedrock_region,
        endpoint_url=settings.bedrock_endpoint_url,
        timeout_s=settings.bedrock_timeout_s,
        max_attempts=settings.bedrock_max_attempts,
    )
