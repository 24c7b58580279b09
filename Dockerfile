# The plan service with Ollama as its small-model backend. The embedded
# llama.cpp model is left out of the image: production talks to Ollama.
#   docker build -t plan-service .
#   docker run -p 8080:8080 -e OLLAMA_HOST=http://ollama:11434 plan-service

FROM python:3.11-slim AS build
ENV POETRY_VERSION=2.5.1 \
    POETRY_VIRTUALENVS_IN_PROJECT=true \
    POETRY_NO_INTERACTION=1 \
    PIP_NO_CACHE_DIR=1
RUN pip install "poetry==${POETRY_VERSION}"
WORKDIR /srv
# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml poetry.lock README.md ./
RUN poetry install --only main --no-root
COPY app ./app
RUN poetry install --only main

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 planner
WORKDIR /srv
COPY --from=build --chown=planner:planner /srv /srv
ENV PATH=/srv/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    SMALL_MODEL_BACKEND=ollama \
    OLLAMA_HOST=http://ollama:11434
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["plan-service"]
