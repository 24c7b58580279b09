"""Run the service: `python -m app` (host and port from the settings)."""

from __future__ import annotations

import uvicorn
from dotenv import load_dotenv

from app.core.config import get_settings


def main() -> None:
    # Export .env to the process environment too, so that libraries which read their own
    # variables (boto3's AWS_*, OTEL_*) see the same file as the settings.
    load_dotenv(override=False)
    settings = get_settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # RequestIdMiddleware logs each request with its id and latency
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
