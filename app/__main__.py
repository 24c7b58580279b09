"""Run the service: `python -m app` (host and port from the settings)."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import uvicorn
from dotenv import load_dotenv
from pydantic import ValidationError

from app.core.config import get_settings
from app.domain.calibration import CalibrationError
from app.main import load_configured_calibration


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    # Export .env to the process environment too, so that libraries which read their own
    # variables (boto3's AWS_*, OTEL_*) see the same file as the settings.
    load_dotenv(override=False)
    try:
        settings = get_settings()
        # Checked here too, so that a bad file is one clear line instead of a traceback.
        load_configured_calibration(settings)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']).upper()}: {item['msg']}"
            for item in error.errors()
        )
        sys.exit(f"plan-service: invalid settings: {problems}")
    except CalibrationError as error:
        sys.exit(f"plan-service: {error}")
    if settings.workers > 1 and not settings.redis_url:
        print(
            f"plan-service: warning: WORKERS={settings.workers} without REDIS_URL: each worker "
            "keeps its own delegation budget and cache, so the fleet may delegate more than "
            "DELEGATION_MAX_RATIO; set REDIS_URL to share them",
            file=sys.stderr,
        )
    # Uvicorn (0.55) ends a signalled shutdown by raising the signal again under the handler it
    # found, which by default kills the process (exit status -15, 143 in a shell) after a
    # stop that went as planned. This handler makes that stop exit with 0, and a SIGTERM
    # that arrives before uvicorn installs its own handler still stops the process.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # RequestIdMiddleware logs each request with its id and latency
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        workers=settings.workers,
    )


if __name__ == "__main__":
    main()
