"""Create an Ollama model from a Modelfile through Ollama's REST API.

Local files are checked first (each must be a GGUF file), then `GET /api/version`
checks that the server responds, before any file is hashed. A FROM (or ADAPTER)
that names a local file is sent as a blob: the file's SHA-256 digest is computed,
`HEAD /api/blobs/<digest>` asks whether the server already holds it, and only a
missing blob is uploaded with `Client.create_blob`. Then
`Client.create` sends the model name, the blob digests by file name, and the
template, system prompt, parameters, licenses and messages of the Modelfile, and
the streamed status lines are echoed. A FROM that is no local file is an existing
model name and is sent as `from`.

NOTE: ollama-python 0.6.3's `create_blob` hashes the file again before uploading,
so a blob the server lacks is read twice (about 10 s extra for a 5 GB GGUF on a
disk that reads 500 MB/s, an estimate).
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ollama

from app.backends.ollama import redact_host
from app.modelstore.checksums import file_hex_digest
from app.modelstore.errors import ModelCreateError
from app.modelstore.model_files import LocalModelFiles, find_model_files
from app.modelstore.modelfile import Modelfile, read_modelfile

logger = logging.getLogger(__name__)

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEFAULT_OLLAMA_PORT = 11434
# Connecting must be quick; uploading a multi-gigabyte blob and creating the model may not.
_TIMEOUT = httpx.Timeout(None, connect=10.0)
_VERSION_TIMEOUT_S = 10.0

Echo = Callable[[str], None]


@dataclass(frozen=True)
class CreateResult:
    """The outcome of creating one model: the blobs sent or reused and the status lines."""

    model: str
    host: str
    uploaded: tuple[str, ...] = ()
    reused: tuple[str, ...] = ()
    statuses: tuple[str, ...] = field(default_factory=tuple)


def resolve_host(host: str | None) -> str:
    """Return the base URL for `host` ("127.0.0.1:11434", "http://box", or None).

    Without a scheme the port defaults to Ollama's 11434; with one, to the scheme's
    port, as the ollama client does.
    """
    if not host or not host.strip():
        return DEFAULT_OLLAMA_HOST
    text = host.strip()
    has_scheme = "://" in text
    parts = urllib.parse.urlsplit(text if has_scheme else f"http://{text}")
    if parts.port is not None:
        port = parts.port
    elif has_scheme:
        port = 443 if parts.scheme == "https" else 80
    else:
        port = DEFAULT_OLLAMA_PORT
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"  # an IPv6 address
    user_info = parts.netloc.rpartition("@")[0]
    netloc = f"{user_info}@{hostname}:{port}" if user_info else f"{hostname}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def create_model(
    modelfile_path: Path,
    name: str,
    host: str | None = None,
    *,
    echo: Echo = print,
) -> CreateResult:
    """Create model `name` on the Ollama server at `host` from the Modelfile at `modelfile_path`.

    Raises ModelfileError for a Modelfile that does not parse and ModelCreateError
    when a referenced file is missing or no GGUF file, Ollama is unreachable or it
    rejects the model.
    """
    modelfile = read_modelfile(modelfile_path)
    files = find_model_files(modelfile, modelfile_path)
    base_url = resolve_host(host)
    shown_host = redact_host(base_url)
    try:
        with (
            ollama.Client(host=base_url, timeout=_TIMEOUT) as client,
            httpx.Client(base_url=base_url, timeout=_TIMEOUT, headers=_auth_headers()) as http,
        ):
            _check_server(http, shown_host)
            blobs = _BlobStore(client, http, shown_host, echo)
            request = _create_request(modelfile, files, blobs)
            statuses = _stream_create(client, name, request, echo)
    except (ConnectionError, httpx.TransportError) as error:
        raise ModelCreateError(
            f"cannot connect to Ollama at {shown_host} ({error}): start it with `ollama serve` "
            "or point --host or OLLAMA_HOST at a running server"
        ) from None
    except ollama.ResponseError as error:
        status = f" (HTTP {error.status_code})" if error.status_code > 0 else ""
        raise ModelCreateError(
            f"Ollama at {shown_host} could not create model {name!r}: {error.error}{status}"
        ) from None

    logger.info("ollama model created model=%s host=%s", name, shown_host)
    return CreateResult(
        model=name,
        host=shown_host,
        uploaded=tuple(blobs.uploaded),
        reused=tuple(blobs.reused),
        statuses=tuple(statuses),
    )


class _BlobStore:
    """Blob uploader that skips the files the server already stores."""

    def __init__(self, client: ollama.Client, http: httpx.Client, shown_host: str, echo: Echo):
        self.client = client
        self.http = http
        self.shown_host = shown_host
        self.echo = echo
        self.uploaded: list[str] = []
        self.reused: list[str] = []

    def ensure(self, path: Path) -> str:
        """Return the blob digest of the file at `path`, uploading it when the server lacks it."""
        try:
            size = path.stat().st_size
            self.echo(f"hashing {path.name} ({size} bytes)")
            digest = f"sha256:{file_hex_digest(path, 'sha256')}"
        except OSError as error:
            raise ModelCreateError(f"cannot read {path}: {error.strerror or error}") from None

        response = self.http.head(f"/api/blobs/{digest}")
        if response.status_code == 200:
            self.echo(f"using existing blob {digest} for {path.name}")
            self.reused.append(digest)
            return digest
        if response.status_code != 404:
            raise ModelCreateError(
                f"Ollama at {self.shown_host} returned HTTP {response.status_code} for HEAD "
                f"/api/blobs/{digest}; expected 200 or 404"
            )

        self.echo(f"uploading {path.name} as {digest}")
        uploaded = self.client.create_blob(path)
        if uploaded != digest:
            raise ModelCreateError(
                f"{path} changed while it was being uploaded (digest {digest}, then {uploaded}); "
                "run the command again once the file is complete"
            )
        logger.info("ollama blob uploaded digest=%s bytes=%d", digest, size)
        self.uploaded.append(digest)
        return digest


def _check_server(http: httpx.Client, shown_host: str) -> None:
    """Ask the server for its version, so that a wrong host fails before a long hash."""
    try:
        response = http.get("/api/version", timeout=_VERSION_TIMEOUT_S)
    except httpx.TimeoutException:
        raise ModelCreateError(
            f"GET /api/version on Ollama at {shown_host} timed out after "
            f"{_VERSION_TIMEOUT_S:.0f} s: check that it is running and that --host or "
            "OLLAMA_HOST points at it"
        ) from None

    status = response.status_code
    if status in (401, 403):
        raise ModelCreateError(
            f"{shown_host} rejected GET /api/version with HTTP {status}: set OLLAMA_API_KEY "
            "to the token that the server or its proxy expects, or check --host or OLLAMA_HOST"
        )
    version = _version_of(response)
    if version is None:
        raise ModelCreateError(
            f"{shown_host} returned HTTP {status} and no Ollama version for GET /api/version, "
            "so it does not look like an Ollama server: check --host or OLLAMA_HOST"
        )
    logger.info("ollama server reachable host=%s version=%s", shown_host, version)


def _version_of(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else None


def _create_request(
    modelfile: Modelfile, files: LocalModelFiles, blobs: _BlobStore
) -> dict[str, Any]:
    """Build the keyword arguments of `Client.create` other than the model name."""
    request: dict[str, Any] = {}
    if files.weights is None:
        request["from_"] = modelfile.from_
    else:
        request["files"] = {files.weights.name: blobs.ensure(files.weights)}

    optional = {
        "adapters": {path.name: blobs.ensure(path) for path in files.adapters},
        "template": modelfile.template,
        "system": modelfile.system,
        "license": modelfile.licenses,
        "parameters": modelfile.parameters,
        "messages": modelfile.messages,
    }
    request.update({key: value for key, value in optional.items() if value})
    return request


def _stream_create(
    client: ollama.Client, name: str, request: dict[str, Any], echo: Echo
) -> list[str]:
    statuses: list[str] = []
    for progress in client.create(model=name, stream=True, **request):
        status = progress.status or ""
        if progress.total and progress.completed is not None:
            echo(f"{status} {progress.completed}/{progress.total}")
        else:
            echo(status)
        statuses.append(status)
    if not statuses or statuses[-1] != "success":
        last = statuses[-1] if statuses else "nothing"
        raise ModelCreateError(
            f"Ollama ended the create stream for {name!r} without success (last status: {last})"
        )
    return statuses


def _auth_headers() -> dict[str, str]:
    # The ollama client sends the same bearer token, so an authenticating proxy admits both.
    api_key = os.environ.get("OLLAMA_API_KEY")
    return {"authorization": f"Bearer {api_key}"} if api_key else {}
