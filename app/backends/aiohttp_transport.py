"""An httpx transport that sends requests through aiohttp, for the Ollama client.

The official `ollama` client is built on httpx. Its default transport
(httpcore over anyio) yields to the event loop at each write, lock and
buffered read, even when no I/O waits, and its connection pool scans every
connection per request. Under many concurrent plan requests on one worker,
that CPU time and those yields delay every request. This transport keeps
the httpx and ollama interfaces and exceptions, and hands the HTTP/1.1
connections to aiohttp. In the 64-client benchmark (docs/benchmarks.md),
the service's CPU time per request fell from 2.8 to 2.2 ms with it.

aiohttp errors become the httpx exceptions the ollama client and
`OllamaBackend` already handle: a refused connection is `httpx.ConnectError`,
a response that stops early or breaks HTTP is `httpx.RemoteProtocolError`,
and a slow server is `httpx.ConnectTimeout` or `httpx.ReadTimeout`.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import yarl

CHUNK_BYTES = 65_536
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE_S = 15.0
# A response head as large as httpcore reads (100 KiB), instead of aiohttp's 8,190 bytes
# per line and 128 header fields.
MAX_HEAD_BYTES = 100 * 1024
MAX_HEADER_FIELDS = 1024
# httpcore's words for a connection closed before any byte of a response, kept the same so
# that callers tell that case apart from a broken response in one way for both transports.
NO_RESPONSE_MESSAGE = "Server disconnected without sending a response."

# Checked in order, so each subclass comes before its base classes.
_ERROR_MAP: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.TransportError),
)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests over one aiohttp session with a pool of keep-alive connections."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
    ) -> None:
        """Configure the pool; the session opens with the first request, in its event loop.

        `max_connections` bounds the open connections (0 for no bound); a request
        beyond it waits for one, within the request's pool timeout. An idle
        connection closes after `keepalive_s` seconds.
        """
        if max_connections < 0:
            raise ValueError(f"max_connections must be 0 or more, got {max_connections}")
        if keepalive_s <= 0:
            raise ValueError(f"keepalive_s must be positive, got {keepalive_s}")
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"AiohttpTransport(max_connections={self.max_connections}, "
            f"keepalive_s={self.keepalive_s})"
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` and return its response, with the body still to be read."""
        body = await request.aread()
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            # The body is sent whole, with its Content-Length, never in chunks.
            if name.lower() != "transfer-encoding"
        ]
        with _as_httpx_errors(request, before_response=True):
            response = await self._current_session().request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,  # httpx follows redirects itself when configured to
                timeout=_client_timeout(request),
            )
        version = response.version
        http_version = f"HTTP/{version.major}.{version.minor}" if version else "HTTP/1.1"
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            request=request,
            extensions={
                "http_version": http_version.encode("ascii"),
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None and self._session_loop is asyncio.get_running_loop():
            await session.close()

    def _current_session(self) -> aiohttp.ClientSession:
        """Return the session of the running event loop, opening it on first use.

        A session belongs to the loop it was opened in. A transport used from a
        new loop (its old one is finished) opens a new session there.
        """
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            connector = _CheckedConnector(
                limit=self.max_connections, keepalive_timeout=self.keepalive_s
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                cookie_jar=aiohttp.DummyCookieJar(),  # and keeps cookies itself
                max_line_size=MAX_HEAD_BYTES,
                max_field_size=MAX_HEAD_BYTES,
                max_headers=MAX_HEADER_FIELDS,
            )
            self._session_loop = loop
        return self._session


class _CheckedConnector(aiohttp.TCPConnector):
    """A connector that checks an idle connection before it sends a request on it.

    aiohttp reuses a pooled connection as long as the event loop has not yet
    processed its closing. A server that closes right after a response (or a
    broken one that writes to an idle connection) leaves a FIN or stray bytes
    there, and the next request would fail or read the stray bytes as its
    response. Like httpcore, this drops an idle connection whose socket is
    already readable, since nothing should arrive on it before a request.
    """

    async def _get(self, key: Any, traces: list[Any]) -> aiohttp.connector.Connection | None:
        # NOTE: _get is aiohttp's internal hook for taking a pooled connection (as of
        # 3.14), so tests/integration/test_aiohttp_transport.py fails if it changes.
        while True:
            connection = await super()._get(key, traces)
            if connection is None or _still_idle(connection):
                return connection
            connection.close()


def _still_idle(connection: aiohttp.connector.Connection) -> bool:
    """Return True when nothing arrived on a pooled connection since its last response."""
    protocol = connection.protocol
    transport = connection.transport
    if protocol is None or transport is None or protocol.should_close:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


class _ResponseBody(httpx.AsyncByteStream):
    """The body of an aiohttp response, read in chunks by httpx."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._response.connection
        protocol = connection.protocol if connection is not None else None
        try:
            with _as_httpx_errors(self._request):
                async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                    yield chunk
        except httpx.RemoteProtocolError as error:
            # A body cut short by a broken connection (a reset, say) rather than by the
            # server ending it early: a network failure, as httpx reports it.
            if protocol is not None and isinstance(protocol.exception(), OSError):
                raise httpx.ReadError(str(error), request=self._request) from error
            raise

    async def aclose(self) -> None:
        # A connection returns to the pool only after its whole body was read, because
        # the rest of an unread body would arrive ahead of the next response.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


def _client_timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    """Translate httpx's timeouts; aiohttp has no write timeout, so the others bound a request."""
    timeout = request.extensions.get("timeout", {})
    return aiohttp.ClientTimeout(
        total=None,
        connect=timeout.get("pool"),  # waiting for a free connection, then connecting
        sock_connect=timeout.get("connect"),
        sock_read=timeout.get("read"),
    )


@contextmanager
def _as_httpx_errors(request: httpx.Request, *, before_response: bool = False) -> Iterator[None]:
    """Raise the httpx exception that matches an aiohttp one, with the original as its cause.

    `before_response` is True while no byte of the response has arrived.
    """
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as error:
        if before_response and isinstance(error, aiohttp.ServerDisconnectedError):
            raise httpx.RemoteProtocolError(NO_RESPONSE_MESSAGE, request=request) from error
        for aiohttp_type, httpx_type in _ERROR_MAP:
            if isinstance(error, aiohttp_type):
                message = str(error) or type(error).__name__
                raise httpx_type(message, request=request) from error
        raise
