"""Create an Ollama model from a Modelfile through Ollama's REST API.

A FROM (or ADAPTER) that names a local file is sent as a blob: the file's SHA-256
digest is computed, `HEAD /api/blobs/<digest>` asks whether the server already
holds it, and only a missing blob is uploaded with `Client.create_blob`. Then
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
from app.modelstore.modelfile import Modelfile, read_modelfile

logger = logging.getLogger(__name__)

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEFAULT_OLLAMA_PORT = 11434
# Connecting must be quick; uploading a multi-gigabyte blob and creating the model may not.
_TIMEOUT = httpx.Timeout(None, connect=10.0)
_MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin")

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
    when a referenced file is missing, Ollama is unreachable or it rejects the model.
    """
    modelfile = read_modelfile(modelfile_path)
    base_url = resolve_host(host)
    shown_host = redact_host(base_url)
    try:
        with (
            ollama.Client(host=base_url, timeout=_TIMEOUT) as client,
            httpx.Client(base_url=base_url, timeout=_TIMEOUT, headers=_auth_headers()) as http,
        ):
            blobs = _BlobStore(client, http, shown_host, echo)
            request = _create_request(modelfile, modelfile_path, blobs)
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


def _create_request(
    modelfile: Modelfile, modelfile_path: Path, blobs: _BlobStore
) -> dict[str, Any]:
    """Build the keyword arguments of `Client.create` other than the model name."""
    base_dir = modelfile_path.parent
    request: dict[str, Any] = {}
    source = _local_file(modelfile.from_, base_dir, f"FROM on line {modelfile.from_line}")
    if source is None:
        request["from_"] = modelfile.from_
    else:
        request["files"] = {source.name: blobs.ensure(source)}

    adapters: dict[str, str] = {}
    for adapter in modelfile.adapters:
        path = _local_file(adapter, base_dir, "ADAPTER")
        if path is None:
            raise ModelCreateError(f"ADAPTER {adapter!r} in {modelfile_path} is not a file")
        adapters[path.name] = blobs.ensure(path)

    optional = {
        "adapters": adapters,
        "template": modelfile.template,
        "system": modelfile.system,
        "license": modelfile.licenses,
        "parameters": modelfile.parameters,
        "messages": modelfile.messages,
    }
    request.update({key: value for key, value in optional.items() if value})
    return request


def _local_file(reference: str, base_dir: Path, where: str) -> Path | None:
    """Resolve a FROM or ADAPTER value to a file, or None when it names a model instead.

    Like Ollama, a relative path is relative to the Modelfile's folder. A value that
    looks like a path (./, ../, /, ~ or a model-file suffix) but does not exist is an error.
    """
    expanded = Path(reference).expanduser()
    candidate = expanded if expanded.is_absolute() else base_dir / expanded
    looks_like_path = reference.startswith(("/", "./", "../", "~")) or reference.endswith(
        _MODEL_FILE_SUFFIXES
    )
    if candidate.is_dir():
        raise ModelCreateError(
            f"{where} names the folder {candidate}; point it at a GGUF file instead"
        )
    if candidate.is_file():
        return candidate
    if looks_like_path:
        raise ModelCreateError(
            f"{where} names {reference!r}, but {candidate} does not exist: "
            "run `plan-model pull` first or fix the path"
        )
    return None


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
