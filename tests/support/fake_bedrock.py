"""A local HTTP server that speaks the Bedrock Runtime Converse protocol, for tests.

FakeBedrock listens on 127.0.0.1 on an ephemeral port and serves
`POST /model/{modelId}/converse` the way Amazon Bedrock Runtime does: JSON in,
JSON out, and errors as restJson services send them (an HTTP status, an
`x-amzn-ErrorType` header and a JSON body with "message"). Every request must
carry a valid SigV4 signature for service "bedrock" in the server's region,
made with the server's test credentials; the server recomputes the signature
with botocore's signer and rejects a mismatch with 403 InvalidSignatureException.

Typical use, with the real boto3 client pointed at `endpoint_url`::

    with FakeBedrock() as fake:
        fake.enqueue(Reply(text="(Yield :output 1)"), Reply.error("ThrottlingException"))
        ...  # call Bedrock with endpoint_url=fake.endpoint_url and the TEST_* credentials
        assert fake.requests[0].json["inferenceConfig"]["temperature"] == 0

Each signed Converse request takes the next queued Reply, or `default_reply` when
the queue is empty. The server records every request, rejected ones included.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

logger = logging.getLogger(__name__)

TEST_REGION = "us-east-1"
TEST_ACCESS_KEY_ID = "AKIAFAKEBEDROCKTEST0"
TEST_SECRET_ACCESS_KEY = "fake-bedrock-secret-access-key-for-tests"
SIGNING_SERVICE = "bedrock"

# The HTTP status Bedrock Runtime sends with each error code of Converse (plus
# ServiceQuotaExceededException, which other operations of the service send).
ERROR_STATUS = {
    "AccessDeniedException": 403,
    "InternalServerException": 500,
    "ModelErrorException": 424,
    "ModelNotReadyException": 429,
    "ModelTimeoutException": 408,
    "ResourceNotFoundException": 404,
    "ServiceQuotaExceededException": 400,
    "ServiceUnavailableException": 503,
    "ThrottlingException": 429,
    "ValidationException": 400,
}

_CONVERSE_PATH = re.compile(r"^/model/(?P<model_id>[^/?]+)/converse$")
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed_headers>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_DEFAULT_ERROR_MESSAGE = "scripted error from the fake Bedrock server"


@dataclass(frozen=True)
class Reply:
    """One scripted response: a completion, an AWS error or a raw body, after an optional delay."""

    text: str = "(Yield :output (fake reply))"
    delay_s: float = 0.0
    error_code: str | None = None
    error_message: str = _DEFAULT_ERROR_MESSAGE
    status: int | None = None  # default: 200, or ERROR_STATUS[error_code] (500 if unlisted)
    raw_body: bytes | None = None  # sent as is, with `status` (default 200)
    stop_reason: str = "end_turn"
    input_tokens: int = 11
    output_tokens: int = 7

    @classmethod
    def error(
        cls, code: str, message: str | None = None, *, status: int | None = None, delay_s: float = 0
    ) -> Reply:
        """Build an AWS error reply with the status Bedrock uses for `code`."""
        return cls(
            error_code=code,
            error_message=message or _DEFAULT_ERROR_MESSAGE,
            status=status,
            delay_s=delay_s,
        )

    @classmethod
    def raw(cls, body: bytes, *, status: int = 200, delay_s: float = 0) -> Reply:
        """Build a reply that sends `body` unchanged, for malformed responses."""
        return cls(raw_body=body, status=status, delay_s=delay_s)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str  # as sent, still URL-encoded
    model_id: str | None  # decoded from the path, None when the path is not a Converse path
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any  # the parsed body, None when it is not JSON
    auth_error: str | None = None  # why the signature was rejected, None when it was valid


@dataclass
class _State:
    replies: deque[Reply] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeBedrock:
    """A Bedrock Runtime Converse endpoint on 127.0.0.1 that checks SigV4 and replays a script."""

    def __init__(
        self,
        *,
        region: str = TEST_REGION,
        access_key_id: str = TEST_ACCESS_KEY_ID,
        secret_access_key: str = TEST_SECRET_ACCESS_KEY,
        default_reply: Reply | None = None,
        responder: Callable[[dict[str, Any]], Reply] | None = None,
        max_clock_skew_s: float = 300.0,
    ) -> None:
        self.region = region
        self.access_key_id = access_key_id
        self.default_reply = default_reply or Reply()
        # Builds the reply from the Converse request body when the queue is empty.
        self.responder = responder
        self._secret_access_key = secret_access_key
        self._max_clock_skew_s = max_clock_skew_s
        self._state = _State()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        url = self.endpoint_url if self._server else "not started"
        return f"FakeBedrock(region={self.region!r}, endpoint_url={url!r})"

    @property
    def endpoint_url(self) -> str:
        """The URL to pass as boto3's `endpoint_url`."""
        if self._server is None:
            raise RuntimeError("FakeBedrock is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def pending_replies(self) -> int:
        """The number of queued replies not yet sent."""
        with self._state.lock:
            return len(self._state.replies)

    def enqueue(self, *replies: Reply) -> None:
        """Queue replies for the next signed Converse requests, in order."""
        with self._state.lock:
            self._state.replies.extend(replies)

    def start(self) -> FakeBedrock:
        """Bind an ephemeral port on 127.0.0.1 and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeBedrock is already started")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-bedrock",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed replies and close open connections."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        with self._state.lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: the client closed the connection already.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeBedrock:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _next_reply(self, request: dict[str, Any]) -> Reply:
        with self._state.lock:
            if self._state.replies:
                return self._state.replies.popleft()
        return self.responder(request) if self.responder else self.default_reply

    def _record(self, request: RecordedRequest) -> None:
        with self._state.lock:
            self._state.requests.append(request)

    def _track(self, connection: socket.socket, open_: bool) -> None:
        with self._state.lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _wait_or_stop(self, delay_s: float) -> bool:
        """Sleep `delay_s`; return False when the server stops meanwhile."""
        return not self._stopping.wait(delay_s) if delay_s > 0 else True

    def check_signature(
        self, method: str, path: str, headers: Message, body: bytes
    ) -> tuple[str, str] | None:
        """Return (error code, message) when the request's SigV4 signature is invalid, else None."""
        authorization = headers.get("Authorization")
        if not authorization:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        match = _AUTHORIZATION.match(authorization.strip())
        if match is None:
            return (
                "IncompleteSignatureException",
                f"malformed Authorization header: {authorization!r}",
            )

        scope = match["credential"].split("/")
        if len(scope) != 5:
            return (
                "IncompleteSignatureException",
                f"malformed credential scope: {match['credential']!r}",
            )
        access_key_id, date, region, service, terminator = scope
        if access_key_id != self.access_key_id:
            return (
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        if (region, service, terminator) != (self.region, SIGNING_SERVICE, "aws4_request"):
            return (
                "InvalidSignatureException",
                f"Credential should be scoped to {self.region}/{SIGNING_SERVICE}/aws4_request, "
                f"not {region}/{service}/{terminator}",
            )

        amz_date = headers.get("X-Amz-Date", "")
        try:
            signed_at = dt.datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            return "IncompleteSignatureException", f"invalid or missing X-Amz-Date: {amz_date!r}"
        if date != amz_date[:8]:
            return "InvalidSignatureException", "credential scope date does not match X-Amz-Date"
        skew = abs((dt.datetime.now(dt.UTC) - signed_at).total_seconds())
        if skew > self._max_clock_skew_s:
            return "InvalidSignatureException", f"Signature expired: signed {skew:.0f}s from now"

        signed_names = match["signed_headers"].split(";")
        if "host" not in signed_names or "x-amz-date" not in signed_names:
            return "InvalidSignatureException", "SignedHeaders must include host and x-amz-date"
        missing = [name for name in signed_names if headers.get(name) is None]
        if missing:
            return (
                "InvalidSignatureException",
                f"signed headers missing from the request: {missing}",
            )
        declared_hash = headers.get("X-Amz-Content-SHA256")
        if declared_hash is not None and declared_hash != hashlib.sha256(body).hexdigest():
            return "InvalidSignatureException", "X-Amz-Content-SHA256 does not match the body"

        expected = self._expected_signature(method, path, headers, body, signed_names, amz_date)
        if expected is None:
            return "InvalidSignatureException", "the signed header list is not canonical"
        if not hmac.compare_digest(expected, match["signature"]):
            return (
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    def _expected_signature(
        self,
        method: str,
        path: str,
        headers: Message,
        body: bytes,
        signed_names: list[str],
        amz_date: str,
    ) -> str | None:
        signed_headers = {name: ",".join(headers.get_all(name, [])) for name in signed_names}
        request = AWSRequest(
            method=method, url=f"http://{headers['Host']}{path}", headers=signed_headers, data=body
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials(self.access_key_id, self._secret_access_key), SIGNING_SERVICE, self.region
        )
        if signer.signed_headers(signer.headers_to_sign(request)) != ";".join(signed_names):
            return None
        canonical_request = signer.canonical_request(request)
        string_to_sign = signer.string_to_sign(request, canonical_request)
        return signer.signature(string_to_sign, request)


def converse_validation_error(body: Any) -> str | None:
    """Return why Bedrock would reject this Converse request body, or None when it is valid.

    Checks the rules a text-only Converse client can break: a non-empty `messages`
    list that starts with a user message and alternates roles, non-blank text
    blocks, and a positive `maxTokens`.
    """
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"

    previous_role = None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{index}.role must be user or assistant, got {role!r}"
        if index == 0 and role != "user":
            return "a conversation must start with a user message"
        if role == previous_role:
            return f"messages.{index} repeats role {role}: roles must alternate"
        previous_role = role
        error = _content_error(message.get("content"), f"messages.{index}.content")
        if error:
            return error

    system = body.get("system", [])
    error = _content_error(system, "system") if system != [] else None
    if error:
        return error
    inference_config = body.get("inferenceConfig", {})
    if not isinstance(inference_config, dict):
        return "inferenceConfig must be an object"
    max_tokens = inference_config.get("maxTokens", 1)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return f"inferenceConfig.maxTokens must be a positive integer, got {max_tokens!r}"
    return None


def _content_error(blocks: Any, where: str) -> str | None:
    if not isinstance(blocks, list) or not blocks:
        return f"{where} must be a non-empty list of content blocks"
    for index, block in enumerate(blocks):
        text = block.get("text") if isinstance(block, dict) else None
        if not isinstance(text, str) or not text.strip():
            return f"the text field in {where}.{index} is missing or blank"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FakeBedrock
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out close their end mid-reply, which is expected in these tests.
        logger.debug("fake_bedrock_handler_failed client=%s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds an idle keep-alive connection stays open
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, False)
        with contextlib.suppress(OSError):  # the client closed the connection first
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read RecordedRequest, not access logs

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path_match = _CONVERSE_PATH.match(self.path)
        model_id = unquote(path_match["model_id"]) if path_match else None
        auth_error = fake.check_signature(self.command, self.path, self.headers, body)
        fake._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                model_id=model_id,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                json=_parse_json(body),
                auth_error=None if auth_error is None else f"{auth_error[0]}: {auth_error[1]}",
            )
        )

        if auth_error is not None:
            self._send_error(403, *auth_error)
            return
        if path_match is None or self.command != "POST":
            self._send_error(404, "UnknownOperationException", f"no operation at {self.path}")
            return
        request = _parse_json(body)
        if request is None:
            self._send_error(400, "SerializationException", "the request body is not valid JSON")
            return
        invalid = converse_validation_error(request)
        if invalid is not None:
            self._send_error(400, "ValidationException", invalid)
            return

        reply = fake._next_reply(request)
        if not fake._wait_or_stop(reply.delay_s):
            self.close_connection = True
            return
        self._send_reply(reply)

    def _send_reply(self, reply: Reply) -> None:
        if reply.raw_body is not None:
            self._send(reply.status or 200, reply.raw_body, {})
        elif reply.error_code is not None:
            status = reply.status or ERROR_STATUS.get(reply.error_code, 500)
            self._send_error(status, reply.error_code, reply.error_message)
        else:
            self._send(reply.status or 200, _completion_body(reply), {})

    def _send_error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        self._send(status, body, {"x-amzn-ErrorType": code})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up on this request


def _completion_body(reply: Reply) -> bytes:
    document = {
        "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
        "stopReason": reply.stop_reason,
        "usage": {
            "inputTokens": reply.input_tokens,
            "outputTokens": reply.output_tokens,
            "totalTokens": reply.input_tokens + reply.output_tokens,
        },
        "metrics": {"latencyMs": int(reply.delay_s * 1000)},
    }
    # Raw UTF-8, not \u escapes, so clients must decode the body as UTF-8 to get the text right.
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
