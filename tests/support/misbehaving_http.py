"""A raw-socket HTTP server on 127.0.0.1 that sends exactly the bytes a test scripts.

Each accepted connection runs a handler on its own daemon thread. The handler
gets a `ServerConnection` and decides what goes on the wire: keep the
connection alive or not, stall, reset it, or send a response no well-behaved
server would. The helpers below build the Ollama response bodies and the raw
HTTP/1.x messages around them. `serve_requests` runs one misbehaviour on the
first request and responds to the rest like a healthy Ollama server:

    def reset_midway(connection: ServerConnection, request: RawRequest) -> bool:
        connection.send(http_response(200, chat_body(PLAN))[:-10])
        connection.reset()
        return False

    with MisbehavingServer(serve_requests(reset_midway)) as server:
        ...  # point an Ollama client at server.url
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 65_536
ACCEPT_BACKLOG = 512
SOCKET_BUFFER_BYTES = 65_536
PLAN = "( Yield :output ( Today ) )"


@dataclass(frozen=True)
class RawRequest:
    """One request as read off the socket."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names, where the last of repeated names wins
    body: bytes
    connection_id: int  # accept order of the connection it came on, from 0
    index: int = 0  # arrival order on the server, from 0

    @property
    def is_first(self) -> bool:
        """Whether this is the first request the server received."""
        return self.index == 0


class ServerConnection:
    """One accepted client connection, driven by a handler thread."""

    def __init__(self, sock: socket.socket, connection_id: int, server: MisbehavingServer) -> None:
        self.socket = sock
        self.connection_id = connection_id
        self._server = server
        self._buffer = b""

    @property
    def stopping(self) -> threading.Event:
        """Set when the server closes, so that a stalled handler can end early."""
        return self._server.stopping

    def read_request(self) -> RawRequest | None:
        """Read the next request, or return None when the client closed the connection."""
        head = self._read_until(b"\r\n\r\n")
        if head is None:
            return None
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()

        length = int(headers.get("content-length") or 0)
        body = self._read_exactly(length)
        if body is None:
            return None
        return self._server.record(RawRequest(method, path, headers, body, self.connection_id))

    def send(self, data: bytes) -> None:
        """Send all of `data`."""
        self.socket.sendall(data)

    def send_and_close(self, data: bytes) -> None:
        """Send `data` and close, so that the last segment of `data` carries the FIN.

        With the data and the FIN in one segment, a client that has read the data has
        always received the FIN too, and can tell that the connection is closed.
        NOTE: TCP_CORK exists on Linux only, so elsewhere this raises AttributeError.
        """
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        self.socket.sendall(data)
        self.close()

    def wait_for_eof(self, timeout_s: float) -> bool:
        """Return True once the client closes its end, False if it does not within `timeout_s`."""
        self.socket.settimeout(timeout_s)
        try:
            while True:
                data = self.socket.recv(SOCKET_BUFFER_BYTES)
                if not data:
                    return True
                self._buffer += data
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            self.socket.settimeout(None)

    def stall(self, seconds: float) -> None:
        """Send nothing for `seconds`, or until the server closes."""
        self.stopping.wait(seconds)

    def reset(self) -> None:
        """Abort the connection with a TCP RST instead of a FIN."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.socket.close()

    def close(self) -> None:
        """Close the connection with a FIN."""
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        self.socket.close()

    def _read_until(self, marker: bytes) -> bytes | None:
        while marker not in self._buffer:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ValueError("request head is too large")
            if not self._receive():
                return None
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, length: int) -> bytes | None:
        while len(self._buffer) < length:
            if not self._receive():
                return None
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _receive(self) -> bool:
        try:
            data = self.socket.recv(SOCKET_BUFFER_BYTES)
        except OSError:
            return False
        self._buffer += data
        return bool(data)


Handler = Callable[[ServerConnection], None]
# Responds to one request. It returns True to go on reading requests on the connection.
RequestHandler = Callable[[ServerConnection, RawRequest], bool]


def reply_with_plan(connection: ServerConnection, request: RawRequest) -> bool:
    """Send the show or chat response of a healthy Ollama server and keep the connection open."""
    connection.send(http_response(200, body_for(request, PLAN)))
    return True


def serve_requests(first: RequestHandler, rest: RequestHandler = reply_with_plan) -> Handler:
    """Build a handler that uses `first` for the first request and `rest` for later ones."""

    def handle(connection: ServerConnection) -> None:
        while (request := connection.read_request()) is not None:
            respond = first if request.is_first else rest
            if not respond(connection, request):
                return

    handle.__name__ = f"serve_requests({first.__name__}, {rest.__name__})"
    return handle


class MisbehavingServer:
    """A loopback TCP server that runs `handler` for every accepted connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: list[ServerConnection] = []
        self._requests: list[RawRequest] = []
        self._open_count = 0
        self._max_open_count = 0
        self.stopping = threading.Event()

    def __repr__(self) -> str:
        where = self.url if self._listener else "not started"
        return f"MisbehavingServer({where}, handler={self._handler.__name__})"

    @property
    def url(self) -> str:
        """The base URL to pass as the Ollama host."""
        if self._listener is None:
            raise RuntimeError("MisbehavingServer is not started")
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[RawRequest]:
        """Every request read so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def connection_count(self) -> int:
        """The number of connections accepted so far."""
        with self._lock:
            return len(self._connections)

    @property
    def max_open_connections(self) -> int:
        """The maximum number of connections handled at the same time."""
        with self._lock:
            return self._max_open_count

    def record(self, request: RawRequest) -> RawRequest:
        """Add `request` to `requests` and return it with its arrival index."""
        with self._lock:
            indexed = dataclasses.replace(request, index=len(self._requests))
            self._requests.append(indexed)
        return indexed

    def start(self) -> MisbehavingServer:
        """Bind an ephemeral port on 127.0.0.1 and accept connections on a daemon thread."""
        listener = socket.create_server(("127.0.0.1", 0), backlog=ACCEPT_BACKLOG)
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"misbehaving-http-{self.url}", daemon=True
        )
        self._accept_thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, wake stalled handlers and close every connection."""
        if self._listener is None:
            return
        self.stopping.set()
        # Shutting the listener down wakes the accept() that blocks the accept thread.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        self._listener.close()
        self._listener = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def __enter__(self) -> MisbehavingServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            try:
                sock, _address = self._listener.accept()
            except OSError:
                return
            with self._lock:
                connection = ServerConnection(sock, len(self._connections), self)
                self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: ServerConnection) -> None:
        with self._lock:
            self._open_count += 1
            self._max_open_count = max(self._max_open_count, self._open_count)
        try:
            self._handler(connection)
        except OSError as error:
            # Clients time out, get cancelled and hang up mid-reply in these tests.
            logger.debug("misbehaving http handler ended error=%r", error)
        finally:
            with self._lock:
                self._open_count -= 1
            connection.close()


def http_response(
    status: int,
    body: bytes,
    *,
    headers: Sequence[tuple[str, str]] = (),
    version: str = "HTTP/1.1",
    reason: str | None = None,
    content_length: bool = True,
    content_type: str = "application/json; charset=utf-8",
) -> bytes:
    """Build a whole HTTP response: status line, headers, blank line and body."""
    lines = [f"{version} {status} {reason if reason is not None else _reason(status)}"]
    lines.append(f"Content-Type: {content_type}")
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers]
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + body


def chunked(pieces: Iterable[bytes]) -> bytes:
    """Encode `pieces` as an HTTP/1.1 chunked body, with the final empty chunk."""
    encoded = b"".join(f"{len(piece):x}\r\n".encode("ascii") + piece + b"\r\n" for piece in pieces)
    return encoded + b"0\r\n\r\n"


def chat_body(
    content: str, *, logprob_count: int | None = None, model: str = "plan-model"
) -> bytes:
    """Build an Ollama /api/chat response body with one log probability per token.

    Without `logprob_count` each word of `content` is a token. With it, the
    response carries that many log probabilities, to make a large body.
    """
    tokens = content.split(" ") if logprob_count is None else ["x"] * logprob_count
    logprobs = [
        {"token": token, "logprob": -0.125, "bytes": list(token.encode())} for token in tokens
    ]
    payload = {
        "model": model,
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 12,
        "eval_count": len(tokens),
        "logprobs": logprobs,
    }
    return json.dumps(payload).encode("utf-8")


def show_body() -> bytes:
    """Build an Ollama /api/show response body for a text-generation model."""
    payload = {
        "modelfile": "FROM plan-model:latest\n",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "135M"},
        "model_info": {"general.architecture": "llama"},
        "capabilities": ["completion"],
        "modified_at": "2025-01-01T00:00:00Z",
    }
    return json.dumps(payload).encode("utf-8")


def body_for(request: RawRequest, content: str) -> bytes:
    """Return the body Ollama sends for `request`: a show or a chat response."""
    return show_body() if request.path == "/api/show" else chat_body(content)


def _reason(status: int) -> str:
    reasons = {
        200: "OK",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    return reasons.get(status, "Unknown")
