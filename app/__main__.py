"""Run the service: `python -m app` (host and port from the settings)."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn
from dotenv import load_dotenv
from pydantic import ValidationError
from uvicorn.server import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.domain.calibration import CalibrationError
from app.domain.example_bank import BankError, load_bank
from app.main import load_configured_calibration

logger = logging.getLogger("app")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    # Export .env to the process environment too, so that libraries which read their own
    # variables (boto3's AWS_*, OTEL_*) see the same file as the settings.
    load_dotenv(override=False)
    try:
        settings = get_settings()
        _check_files(settings)
    except ValidationError as error:
        sys.exit(f"plan-service: invalid settings: {_describe(error)}")
    except (CalibrationError, BankError, FileNotFoundError) as error:
        sys.exit(f"plan-service: {error}")
    # The workers set logging up again; this covers the supervising process's own lines.
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 and not settings.redis_url:
        logger.warning(
            "WORKERS=%d without REDIS_URL: each worker keeps its own delegation budget, "
            "cache and rate limit, so the fleet may delegate more than DELEGATION_MAX_RATIO; "
            "set REDIS_URL to share them",
            settings.workers,
        )
    # Uvicorn (0.55) ends a signalled shutdown by raising the signal again under the handler it
    # found, which by default kills the process (exit status -15, 143 in a shell) after a
    # stop that went as planned. This handler makes that stop exit with 0, and a SIGTERM
    # that arrives before uvicorn installs its own handler still stops the process.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # RequestIdMiddleware logs each request with its id and latency
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        workers=settings.workers,
    )
    if settings.workers == 1:
        uvicorn.Server(config).run()
        return
    # uvicorn.run would return normally, and the process exit with 0, when a worker
    # fails to start; a process manager must see the failure.
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        logger.error("plan-service stopped: a worker failed to start (its error is logged above)")
        sys.exit(1)


def _check_files(settings: Settings) -> None:
    """Read the files the service needs, so that a bad one is one line, not a traceback.

    Each worker reads them again when it starts; this check runs once, first.
    """
    load_configured_calibration(settings)
    load_bank(settings.examples_path)
    model_path = settings.embedded_model_path
    if settings.resolved_small_backend == "llama-cpp" and model_path and not model_path.is_file():
        raise FileNotFoundError(f"EMBEDDED_MODEL_PATH {model_path} does not exist: fix or unset it")


def _describe(error: ValidationError) -> str:
    """Join pydantic's errors into one line, each led by the variable at fault."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in item["loc"]).upper()
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)


if __name__ == "__main__":
    main()
