"""Run one server for a benchmark: the plan service with benchmark backends, or a bare baseline.

    python -m bench.serve --mode service --port 8181 [--model-latency-ms 200]
    python -m bench.serve --mode service --port 8181 --small ollama --ollama-host URL
    python -m bench.serve --mode baseline --port 8182

Both modes run uvicorn with one worker on 127.0.0.1, with the settings
`python -m app` uses (uvloop and httptools when installed, no access log).
`service` builds the real application with `app.main.create_app`. Its small
model is InstantBackend, which returns a fixed bank plan at once or after
--model-latency-ms, or with `--small ollama` the real Ollama backend pointed
at --ollama-host. Its large model is always an InstantBackend without delay,
so the delegated share adds no model time. `baseline` is a FastAPI
application with one POST endpoint, on the plan path, that returns a
constant JSON object. SIGTERM stops the server, and with --profile a cProfile
dump of the whole run is written on the way out.

`ServerProcess` starts this module as a subprocess and stops it again.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

import uvicorn
from fastapi import FastAPI

from app.backends.base import BackendStatus, ChatMessage, Completion, ModelBackend
from app.backends.factory import build_small_backend
from app.core.config import DEFAULT_EXAMPLES_PATH, Settings
from app.domain.example_bank import load_bank
from app.domain.lispress import tokenize
from app.main import create_app
from bench.common import PLAN_PATH, REPO_ROOT

BASELINE_BODY = {"plan": "( Yield :output ( Today ) )", "model": "baseline"}
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class InstantBackend:
    """A ModelBackend that returns one fixed plan, after an optional simulated model latency."""

    def __init__(self, plan: str, *, model_name: str = "instant", delay_s: float = 0.0) -> None:
        self.backend = "instant"
        self.model_name = model_name
        self.plan = plan
        self.delay_s = delay_s
        self._token_count = len(tokenize(plan))

    def __repr__(self) -> str:
        return f"InstantBackend(model_name={self.model_name!r}, delay_s={self.delay_s})"

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        """Return the fixed plan with log probabilities that vary with the request."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        # A mean token probability between 0.72 and 0.97 that differs between requests,
        # so the delegation policy gets a spread of confidences, as with a real model.
        spread = zlib.crc32(messages[-1].content.encode()) / 2**32
        logprob = -0.03 - 0.3 * spread
        return Completion(
            text=self.plan,
            token_logprobs=(logprob,) * self._token_count,
            input_tokens=sum(len(message.content) for message in messages) // 4,
            output_tokens=self._token_count,
            stop_reason="stop",
        )

    async def probe(self) -> BackendStatus:
        """Report ready."""
        return BackendStatus(self.backend, self.model_name, ready=True, detail="benchmark backend")

    async def aclose(self) -> None:
        """Release nothing: the backend holds no resources."""


def default_bank_plan() -> str:
    """Return the plan of the default bank's first example, a valid plan the planner accepts."""
    return load_bank(DEFAULT_EXAMPLES_PATH)[0].plan


def service_settings(args: argparse.Namespace) -> Settings:
    """Return the service's settings for a benchmark run; no .env file is read."""
    ollama = args.small == "ollama"
    return Settings(
        _env_file=None,
        host="127.0.0.1",
        port=args.port,
        api_keys=None,
        rate_limit_per_minute=0,  # every request comes from one client address
        response_cache_ttl_s=args.cache_ttl_s,
        bank_answer_similarity=2.0,  # above 1: every request reaches the small model
        small_model_backend="ollama" if ollama else "auto",
        ollama_host=args.ollama_host if ollama else None,
        local_model_name=args.ollama_model,
        large_model_backend="none",
        redis_url=None,
        calibration_path=None,
        log_level="INFO",
        log_format="json",
        shutdown_grace_s=2.0,
    )


def build_service(args: argparse.Namespace) -> FastAPI:
    """Create the plan service with the benchmark's backends."""
    settings = service_settings(args)
    plan = default_bank_plan()

    async def backends(configured: Settings) -> tuple[ModelBackend, ModelBackend | None]:
        large = InstantBackend(plan, model_name="instant-large")
        if args.small == "ollama":
            return await build_small_backend(configured), large
        small = InstantBackend(plan, delay_s=args.model_latency_ms / 1000)
        return small, large

    return create_app(settings, backend_factory=backends)


def build_baseline() -> FastAPI:
    """Create a FastAPI application whose one endpoint returns a constant."""
    app = FastAPI()

    @app.post(PLAN_PATH)
    async def constant() -> dict[str, str]:
        return BASELINE_BODY

    return app


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> None:
    """Run the server until SIGTERM or SIGINT."""
    app = build_service(args) if args.mode == "service" else build_baseline()
    # Uvicorn re-raises a handled SIGTERM with the handler it found when it stops, so this
    # handler turns that into a clean exit that writes the profile.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            workers=1,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of `python -m bench.serve`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("service", "baseline"), required=True)
    parser.add_argument("--port", type=int, required=True, help="port to listen on, on 127.0.0.1")
    parser.add_argument(
        "--model-latency-ms",
        type=float,
        default=0.0,
        help="simulated small-model time of each request, in ms (instant backend only)",
    )
    parser.add_argument(
        "--small",
        choices=("instant", "ollama"),
        default="instant",
        help="small model: the in-process instant backend, or the real Ollama backend",
    )
    parser.add_argument("--ollama-host", default=None, help="Ollama URL for --small ollama")
    parser.add_argument("--ollama-model", default="bench-model", help="model name sent to Ollama")
    parser.add_argument(
        "--cache-ttl-s",
        type=float,
        default=0.0,
        help="response cache lifetime in seconds; 0 turns the cache off",
    )
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile dump here")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.small == "ollama" and not args.ollama_host:
        raise SystemExit("bench.serve: --small ollama needs --ollama-host")
    serve(args)


def _stop_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when its parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess:
    """A benchmark server run as a subprocess of this one: started, awaited, and stopped.

    `module_args` are the arguments after `python -m`. The process writes its
    output to `log_path`, and gets the environment without any of the
    service's setting variables, so nothing from the shell changes the run.
    """

    def __init__(
        self,
        module_args: Sequence[str],
        port: int,
        log_path: Path,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.module_args = list(module_args)
        self.port = port
        self.log_path = log_path
        self.settings = dict(settings or {})  # setting variables the process gets, if any
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the process without waiting for it to listen."""
        setting_names = {name.upper() for name in Settings.model_fields}
        environment = {
            name: value for name, value in os.environ.items() if name.upper() not in setting_names
        }
        environment.update(self.settings)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self.module_args],
                cwd=REPO_ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
            )

    def wait_until_listening(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until the port accepts connections; raise RuntimeError if the process exits."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.module_args)} exited with {self.process.returncode} before "
                    f"listening; its output:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(
            f"{' '.join(self.module_args)} did not listen on port {self.port} within "
            f"{timeout_s:g} s; its output:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process with SIGTERM, and kill it when it does not exit in time."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def cpu_seconds(self) -> float:
        """Return the CPU time the process has used so far, user and system, from /proc.

        Returns 0.0 where /proc is missing (not Linux) or the process has exited.
        """
        if self.process is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return 0.0
        # The fields after the command name, which is in brackets and may contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        user_ticks, system_ticks = int(fields[11]), int(fields[12])
        return (user_ticks + system_ticks) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, characters: int = 3000) -> str:
        """Return the end of the process's output."""
        if not self.log_path.is_file():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-characters:]

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()
