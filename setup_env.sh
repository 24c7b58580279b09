#!/usr/bin/env bash
# Install everything the service and its tests need on a fresh clone:
# Poetry (if missing), the Python dependencies with llama-cpp-python built
# from source (about 5 minutes on 2 cores), and the embedded SmolLM2 model.
# Installs redis-server for the tests when missing (needs root or sudo).
# Creates .env from .env.template when there is none. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

POETRY_VERSION="2.5.1"
POETRY_HOME="${POETRY_HOME:-$HOME/.local/share/poetry-venv}"
BIN_DIR="$HOME/.local/bin"

python_ok=$(python3 -c 'import sys; print(int((3, 11) <= sys.version_info[:2] < (3, 14)))')
if [[ "$python_ok" != 1 ]]; then
    echo "error: Python 3.11 to 3.13 is required, found $(python3 --version)" >&2
    exit 1
fi

if ! command -v poetry >/dev/null 2>&1; then
    echo "Installing Poetry $POETRY_VERSION into $POETRY_HOME"
    python3 -m venv "$POETRY_HOME"
    "$POETRY_HOME/bin/pip" install --quiet "poetry==$POETRY_VERSION"
    mkdir -p "$BIN_DIR"
    ln -sf "$POETRY_HOME/bin/poetry" "$BIN_DIR/poetry"
    export PATH="$BIN_DIR:$PATH"
    echo "Poetry is in $BIN_DIR: add it to PATH (export PATH=\"$BIN_DIR:\$PATH\")"
fi

# The tests start redis-server (Debian's package) on free loopback ports; the
# service itself needs Redis only when REDIS_URL is set.
if ! command -v redis-server >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null 2>&1; then
        apt_get=(sudo apt-get)
    else
        apt_get=()
        echo "warning: redis-server is missing and cannot be installed without root;" \
            "the Redis tests will be skipped (install the redis-server package)" >&2
    fi
    if ((${#apt_get[@]})); then
        echo "Installing redis-server (Debian package) for the tests"
        "${apt_get[@]}" update -qq
        DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq redis-server >/dev/null
    fi
fi

poetry config virtualenvs.in-project true --local
poetry install --no-interaction

if [[ ! -f .env ]]; then
    cp .env.template .env
    echo "Created .env from .env.template"
fi

poetry run python - <<'PY'
from app.backends.llama_cpp import default_model_path

print(f"Embedded model: {default_model_path()}")
PY
echo "Set-up complete. Start the service with: poetry run plan-service"
