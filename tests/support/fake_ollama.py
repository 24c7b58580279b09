"""A local HTTP server that speaks Ollama's REST API, scripted per test.

Start it, queue what the next generation requests should receive, point a
client at `server.url`, and read back what the client sent:

    with FakeOllama(models=["plan-model"]) as server:
        server.enqueue(ScriptedReply(content="( Yield :output ( Today ) )"))
        server.enqueue(ScriptedReply.failure(500, "llama runner crashed"))
        ...  # call http://127.0.0.1:<port> through any Ollama client
        assert server.requests_to("/api/chat")[0].body["options"]["temperature"] == 0

Endpoints: POST /api/chat and POST /api/generate (a single JSON object when the
request sets "stream": false, NDJSON chunks otherwise, as Ollama streams by
default), GET /api/tags, POST /api/show, GET /api/version, and GET or HEAD /.
Only the two generation endpoints consume scripted replies. When the queue is
empty they call the responder, which by default replies with `DEFAULT_CONTENT`.
A request for a model the server does not hold gets 404 {"error": "model 'x' not
found"}, and each model name without a tag means its ":latest" tag, as in Ollama.

Model creation follows Ollama's two steps. HEAD /api/blobs/<digest> returns 200
when the blob is stored and 404 when not; POST /api/blobs/<digest> stores the
body (201, or 200 when already stored) and rejects a body whose SHA-256 differs
from the digest with 400. POST /api/create rejects a `files` or `adapters` digest
that was never uploaded with 400, as Ollama does before it starts streaming, then
streams status lines that end with {"status": "success"} (one JSON object when
"stream" is false) and adds the model, so /api/tags lists it. Blob uploads are
recorded with body None, and `blobs` contains their bytes.

Log probabilities are sent only when the request sets "logprobs": true. They use
Ollama's layout: a top-level "logprobs" list with one {"token", "logprob",
"bytes"} object per generated token, plus "top_logprobs" when the request sets
"top_logprobs" above zero.

The server binds 127.0.0.1 on an ephemeral port and serves each connection on
its own daemon thread, so concurrent requests are not serialized.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "test-model"
DEFAULT_CONTENT = "( Yield :output ( Today ) )"
DEFAULT_LOGPROB = -0.05
SERVER_VERSION = "0.13.0"

# A leading run of whitespace joins the next word or punctuation mark, and a
# trailing run is a token of its own, so the tokens concatenate back to the text.
_TOKEN_PATTERN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")

Responder = Callable[[dict[str, Any]], "ScriptedReply"]

BLOBS_PATH = "/api/blobs/"
# Where a Linux Ollama keeps blobs; it appears in the error for a blob never uploaded.
BLOBS_DIR = "/root/.ollama/models/blobs"
_DIGEST_PATTERN = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class ScriptedReply:
    """What the server sends for one generation request."""

    content: str = DEFAULT_CONTENT
    # (token, logprob) pairs whose texts concatenate to `content`. When None, the
    # server splits `content` into word and punctuation tokens at `default_logprob`.
    tokens: tuple[tuple[str, float], ...] | None = None
    default_logprob: float = DEFAULT_LOGPROB
    # True imitates an Ollama release that ignores the "logprobs" request field.
    omit_logprobs: bool = False
    delay_s: float = 0.0
    status: int = 200
    error_message: str | None = None
    # Sent as-is with `status` in place of a generated response, for malformed output.
    raw_body: bytes | None = None
    done_reason: str = "stop"
    prompt_eval_count: int | None = None  # default: the word count of the prompt
    # A broken HTTP exchange instead of a response: "close" closes the connection without
    # a response, "truncated" announces a longer body than it sends, "not_http" replies
    # with bytes that are not HTTP. Each closes the connection afterwards.
    fault: Literal["close", "truncated", "not_http"] | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and "".join(text for text, _ in self.tokens) != self.content:
            raise ValueError("the token texts must concatenate to the reply content")
        if self.delay_s < 0:
            raise ValueError(f"delay_s must not be negative, got {self.delay_s}")

    @classmethod
    def from_tokens(cls, tokens: Iterable[tuple[str, float]], **fields: Any) -> ScriptedReply:
        """Build a reply whose content is the concatenation of `tokens`."""
        pairs = tuple(tokens)
        return cls(content="".join(text for text, _ in pairs), tokens=pairs, **fields)

    @classmethod
    def failure(cls, status: int, message: str, *, delay_s: float = 0.0) -> ScriptedReply:
        """Build an error reply: `status` with the body {"error": message}."""
        return cls(status=status, error_message=message, delay_s=delay_s)

    @classmethod
    def broken(cls, fault: Literal["close", "truncated", "not_http"]) -> ScriptedReply:
        """Build a reply that breaks the HTTP exchange itself (see `fault`)."""
        return cls(fault=fault)

    @classmethod
    def malformed(cls, body: bytes, *, status: int = 200) -> ScriptedReply:
        """Build a reply that sends `body` verbatim as application/json."""
        return cls(status=status, raw_body=body)

    def token_logprobs(self) -> tuple[tuple[str, float], ...]:
        """Return the generated tokens with their log probabilities."""
        if self.tokens is not None:
            return self.tokens
        pieces = _TOKEN_PATTERN.findall(self.content)
        return tuple((piece, self.default_logprob) for piece in pieces)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, None when there was none, the raw text when invalid
    client_port: int = 0  # the client's end of the connection: equal ports, one connection


@dataclass
class _ServerState:
    """What the handler threads share with the test, guarded by `lock`."""

    models: set[str]
    responder: Responder
    version: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    replies: deque[ScriptedReply] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    connections: set[socket.socket] = field(default_factory=set)
    closing: threading.Event = field(default_factory=threading.Event)
    blobs: dict[str, bytes] = field(default_factory=dict)  # "sha256:<hex>" -> content
    created: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> create request


def _default_responder(_request: dict[str, Any]) -> ScriptedReply:
    return ScriptedReply()


class FakeOllama:
    """An Ollama-protocol HTTP server on 127.0.0.1 for tests; use it as a context manager."""

    def __init__(
        self,
        models: Iterable[str] = (DEFAULT_MODEL,),
        *,
        responder: Responder | None = None,
        version: str = SERVER_VERSION,
    ) -> None:
        self._state = _ServerState(
            models={_full_model_name(name) for name in models},
            responder=responder or _default_responder,
            version=version,
        )
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._httpd else "not started"
        return f"FakeOllama({where}, models={sorted(self._state.models)})"

    @property
    def url(self) -> str:
        """The base URL to pass as the Ollama host."""
        if self._httpd is None:
            raise RuntimeError("FakeOllama is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeOllama:
        """Bind an ephemeral port on 127.0.0.1 and serve requests on a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("FakeOllama is already started")
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self._state)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-ollama-{self._httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("fake ollama started url=%s", self.url)
        return self

    def close(self) -> None:
        """Stop serving, wake delayed handlers and drop open connections."""
        if self._httpd is None:
            return
        self._state.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._state.lock:
            connections = list(self._state.connections)
        # Keep-alive connections would otherwise go on being served by their threads.
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def enqueue(self, *replies: ScriptedReply) -> None:
        """Queue replies for the next generation requests, first in, first out."""
        with self._state.lock:
            self._state.replies.extend(replies)

    def set_responder(self, responder: Responder) -> None:
        """Set the function that builds a reply from the request body when the queue is empty."""
        with self._state.lock:
            self._state.responder = responder

    def add_model(self, name: str) -> None:
        """Make `name` available, as `ollama pull` would."""
        with self._state.lock:
            self._state.models.add(_full_model_name(name))

    def remove_model(self, name: str) -> None:
        """Make `name` unavailable, as `ollama rm` would."""
        with self._state.lock:
            self._state.models.discard(_full_model_name(name))

    @property
    def pending_replies(self) -> int:
        """The number of queued replies not yet sent."""
        with self._state.lock:
            return len(self._state.replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    def clear_requests(self) -> None:
        """Clear the record of requests received, so that a long run does not grow it."""
        with self._state.lock:
            self._state.requests.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The requests received so far on `path`, such as "/api/chat"."""
        return [request for request in self.requests if request.path == path]

    @property
    def blobs(self) -> dict[str, bytes]:
        """The uploaded blobs by digest ("sha256:<hex>")."""
        with self._state.lock:
            return dict(self._state.blobs)

    def add_blob(self, data: bytes) -> str:
        """Store `data` as a blob, as an earlier upload would have, and return its digest."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        with self._state.lock:
            self._state.blobs[digest] = data
        return digest

    @property
    def created_models(self) -> dict[str, dict[str, Any]]:
        """The body of the last successful create request for each model name (with its tag)."""
        with self._state.lock:
            return dict(self._state.created)


def unused_local_url() -> str:
    """Return an http URL on 127.0.0.1 whose port had no listener a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _full_model_name(name: str) -> str:
    """Append Ollama's default ":latest" tag when `name` has none."""
    last_segment = name.rsplit("/", 1)[-1]
    return name if ":" in last_segment else f"{name}:latest"


def _normalized_digest(digest: str) -> str | None:
    """Return "sha256:<lowercase hex>" for either of Ollama's digest spellings, else None."""
    match = _DIGEST_PATTERN.match(digest)
    return f"sha256:{match.group(1).lower()}" if match else None


def _create_statuses(request: dict[str, Any], layers: Mapping[str, str]) -> list[dict[str, Any]]:
    """The status lines Ollama streams while it creates a model from uploaded layers."""
    statuses: list[dict[str, Any]] = []
    if request.get("files"):
        statuses.append({"status": "parsing GGUF"})
    for digest in layers.values():
        statuses.append({"status": f"using existing layer {_normalized_digest(digest)}"})
    for key in ("template", "system", "license", "parameters", "messages"):
        if request.get(key):
            content = json.dumps(request[key], sort_keys=True).encode("utf-8")
            layer = f"sha256:{hashlib.sha256(content).hexdigest()}"
            statuses.append({"status": f"creating new layer {layer}"})
    statuses += [{"status": "writing manifest"}, {"status": "success"}]
    return statuses


def _timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the shared state and ignores clients hanging up."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        state: _ServerState,
    ) -> None:
        self.state = state
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Tests make clients time out and hang up mid-reply, and close() cuts
        # keep-alive connections, so neither deserves a traceback on stderr.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError) or self.state.closing.is_set():
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Request handler for one connection, with HTTP/1.1 keep-alive as Ollama's server uses."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeOllama"
    timeout = 30  # seconds an idle keep-alive connection stays open
    server: _Server

    @property
    def state(self) -> _ServerState:
        return self.server.state

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.state.lock:
            self.state.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake ollama %s", format % args)

    def do_HEAD(self) -> None:
        self._record(None)
        if self.path.startswith(BLOBS_PATH):
            status = self._blob_head_status(self.path[len(BLOBS_PATH) :])
        else:
            status = 200 if self.path == "/" else 404
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._dispatch({"/": self._root, "/api/tags": self._tags, "/api/version": self._version})

    def do_POST(self) -> None:
        if self.path.startswith(BLOBS_PATH):
            self._upload_blob(self.path[len(BLOBS_PATH) :])
            return
        routes = {
            "/api/chat": self._chat,
            "/api/generate": self._generate,
            "/api/show": self._show,
            "/api/create": self._create,
        }
        self._dispatch(routes)

    def _dispatch(self, routes: Mapping[str, Callable[[Any], None]]) -> None:
        body = self._read_body()
        self._record(body)
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send_not_found()
            return
        try:
            route(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up, typically on its own timeout.
            self.close_connection = True

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length == 0:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    def _read_raw_body(self) -> bytes:
        """Read the body as bytes, whether sent with Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        pieces: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Skip any trailer fields up to the blank line that ends the body.
                while self.rfile.readline().strip():
                    pass
                return b"".join(pieces)
            pieces.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def _record(self, body: Any) -> None:
        recorded = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            client_port=self.client_address[1],
        )
        with self.state.lock:
            self.state.requests.append(recorded)

    # Endpoints

    def _root(self, _body: Any) -> None:
        self._send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _version(self, _body: Any) -> None:
        self._send_json(200, {"version": self.state.version})

    def _tags(self, _body: Any) -> None:
        with self.state.lock:
            names = sorted(self.state.models)
        self._send_json(200, {"models": [_model_entry(name) for name in names]})

    def _show(self, body: Any) -> None:
        request = self._require_object(body)
        if request is None:
            return
        name = request.get("model") or request.get("name")
        if not self._require_model(name):
            return
        self._send_json(200, _show_response(name))

    def _blob_head_status(self, digest: str) -> int:
        normalized = _normalized_digest(digest)
        if normalized is None:
            return 400
        with self.state.lock:
            return 200 if normalized in self.state.blobs else 404

    def _upload_blob(self, digest: str) -> None:
        data = self._read_raw_body()
        self._record(None)
        expected = _normalized_digest(digest)
        if expected is None:
            self._send_error_json(400, "invalid digest format")
            return
        with self.state.lock:
            already_stored = expected in self.state.blobs
        if already_stored:
            self._send_bytes(200, b"", "text/plain; charset=utf-8")
            return
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != expected:
            message = f'digest mismatch, expected "{digest}", got "{actual}"'
            self._send_error_json(400, message)
            return
        with self.state.lock:
            self.state.blobs[expected] = data
        self._send_bytes(201, b"", "text/plain; charset=utf-8")

    def _create(self, body: Any) -> None:
        request = self._require_object(body)
        if request is None:
            return
        name = request.get("model") or request.get("name")
        if not isinstance(name, str) or not name.strip():
            self._send_error_json(400, "invalid model name")
            return
        layers = {**(request.get("files") or {}), **(request.get("adapters") or {})}
        for digest in layers.values():
            normalized = _normalized_digest(str(digest))
            if normalized is None:
                self._send_error_json(400, "invalid digest format")
                return
            with self.state.lock:
                stored = normalized in self.state.blobs
            if not stored:
                path = f"{BLOBS_DIR}/{normalized.replace(':', '-')}"
                self._send_error_json(400, f"open {path}: no such file or directory")
                return

        failure = self._create_failure(request)
        if failure is None:
            with self.state.lock:
                self.state.models.add(_full_model_name(name))
                self.state.created[_full_model_name(name)] = request
        if not request.get("stream", True):
            if failure is None:
                self._send_json(200, {"status": "success"})
            else:
                self._send_error_json(int(failure.get("status", 500)), failure["error"])
            return
        lines = [failure] if failure is not None else _create_statuses(request, layers)
        self._send_ndjson(200, iter(lines))

    def _create_failure(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Return the error Ollama streams for a create request without usable layers."""
        source = request.get("from")
        if not request.get("files") and not source:
            return {"error": "neither 'from' or 'files' was specified", "status": 400}
        if source and not request.get("files"):
            with self.state.lock:
                known = _full_model_name(str(source)) in self.state.models
            if not known:
                return {"error": "pull model manifest: file does not exist"}
        return None

    def _chat(self, body: Any) -> None:
        self._generate_reply(body, chat=True)

    def _generate(self, body: Any) -> None:
        self._generate_reply(body, chat=False)

    def _generate_reply(self, body: Any, *, chat: bool) -> None:
        request = self._require_object(body)
        if request is None or not self._require_model(request.get("model")):
            return
        reply = self._next_reply(request)
        if reply.delay_s and self.state.closing.wait(reply.delay_s):
            self.close_connection = True
            return

        if reply.fault is not None:
            self._break_exchange(reply.fault)
        elif reply.raw_body is not None:
            self._send_bytes(reply.status, reply.raw_body, "application/json; charset=utf-8")
        elif reply.status >= 400 or reply.error_message is not None:
            self._send_error_json(reply.status, reply.error_message or "scripted failure")
        elif request.get("stream", True):
            self._send_ndjson(reply.status, _stream_chunks(request, reply, chat=chat))
        else:
            self._send_json(reply.status, _whole_response(request, reply, chat=chat))

    def _next_reply(self, request: dict[str, Any]) -> ScriptedReply:
        with self.state.lock:
            if self.state.replies:
                return self.state.replies.popleft()
            responder = self.state.responder
        return responder(request)

    def _require_object(self, body: Any) -> dict[str, Any] | None:
        if isinstance(body, dict):
            return body
        self._send_error_json(400, "invalid request body: expected a JSON object")
        return None

    def _require_model(self, name: Any) -> bool:
        if not isinstance(name, str) or not name:
            self._send_error_json(400, "model is required")
            return False
        with self.state.lock:
            known = _full_model_name(name) in self.state.models
        if not known:
            self._send_error_json(404, f"model '{name}' not found")
        return known

    # Writing responses

    def _send_not_found(self) -> None:
        self._send_bytes(404, b"404 page not found", "text/plain; charset=utf-8")

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send_bytes(status, data, "application/json; charset=utf-8")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _break_exchange(self, fault: str) -> None:
        self.close_connection = True
        if fault == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.write(b'{"model": "')
        elif fault == "not_http":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        self.wfile.flush()

    def _send_ndjson(self, status: int, chunks: Iterator[dict[str, Any]]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            line = json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode("ascii") + line + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# Response bodies


def _whole_response(request: dict[str, Any], reply: ScriptedReply, *, chat: bool) -> dict[str, Any]:
    tokens = reply.token_logprobs()
    response = _response_head(request, reply.content, chat=chat, done=True)
    if _logprobs_requested(request, reply):
        entries = [_logprob_entry(token, logprob, request) for token, logprob in tokens]
        response["logprobs"] = entries
    response.update(_final_fields(request, reply, len(tokens), chat=chat))
    return response


def _stream_chunks(
    request: dict[str, Any], reply: ScriptedReply, *, chat: bool
) -> Iterator[dict[str, Any]]:
    tokens = reply.token_logprobs()
    for token, logprob in tokens:
        chunk = _response_head(request, token, chat=chat, done=False)
        if _logprobs_requested(request, reply):
            chunk["logprobs"] = [_logprob_entry(token, logprob, request)]
        yield chunk

    final = _response_head(request, "", chat=chat, done=True)
    final.update(_final_fields(request, reply, len(tokens), chat=chat))
    yield final


def _response_head(request: dict[str, Any], text: str, *, chat: bool, done: bool) -> dict[str, Any]:
    head: dict[str, Any] = {"model": request["model"], "created_at": _timestamp()}
    if chat:
        head["message"] = {"role": "assistant", "content": text}
    else:
        head["response"] = text
    head["done"] = done
    return head


def _final_fields(
    request: dict[str, Any], reply: ScriptedReply, token_count: int, *, chat: bool
) -> dict[str, Any]:
    prompt_tokens = reply.prompt_eval_count
    if prompt_tokens is None:
        prompt_tokens = _prompt_word_count(request)
    fields: dict[str, Any] = {
        "done_reason": reply.done_reason,
        "total_duration": 1_000_000 + int(reply.delay_s * 1e9),
        "load_duration": 100_000,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": 200_000,
        "eval_count": token_count,
        "eval_duration": 700_000,
    }
    if not chat:
        fields["context"] = list(range(1, prompt_tokens + token_count + 1))
    return fields


def _prompt_word_count(request: dict[str, Any]) -> int:
    if "messages" in request:
        texts = [str(message.get("content") or "") for message in request.get("messages") or []]
    else:
        texts = [str(request.get("system") or ""), str(request.get("prompt") or "")]
    return sum(len(text.split()) for text in texts)


def _logprobs_requested(request: dict[str, Any], reply: ScriptedReply) -> bool:
    return request.get("logprobs") is True and not reply.omit_logprobs


def _logprob_entry(token: str, logprob: float, request: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode("utf-8")),
    }
    top_count = request.get("top_logprobs") or 0
    if isinstance(top_count, int) and top_count > 0:
        entry["top_logprobs"] = _top_logprobs(token, logprob, top_count)
    return entry


def _top_logprobs(token: str, logprob: float, count: int) -> list[dict[str, Any]]:
    """List the generated token first, then made-up alternatives each less likely."""
    alternatives = [(token, logprob)]
    alternatives += [(f"{token}~{rank}", logprob - 2.0 * rank) for rank in range(1, count)]
    return [
        {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}
        for text, value in alternatives
    ]


def _model_details() -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "135M",
        "quantization_level": "Q8_0",
    }


def _model_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 145_000_000,
        "digest": "0" * 64,
        "details": _model_details(),
    }


def _show_response(name: str) -> dict[str, Any]:
    return {
        "license": "",
        "modelfile": f"FROM {_full_model_name(name)}\n",
        "parameters": "temperature 0",
        "template": "{{ .Prompt }}",
        "details": _model_details(),
        "model_info": {"general.architecture": "llama", "general.parameter_count": 134_515_008},
        "capabilities": ["completion"],
        "modified_at": "2025-01-01T00:00:00Z",
    }
