"""A light server for the Ollama API calls the service makes, which responds after a fixed latency.

    python -m bench.simulated_ollama --port 11500 --latency-ms 200

It simulates an Ollama server whose model takes a fixed time per request, for
throughput benchmarks of the real Ollama backend. POST /api/chat waits
--latency-ms, then returns one non-streamed chat response with a fixed plan
and a log probability per token, in the layout of Ollama 0.13. POST /api/show
describes a model that can generate text, and GET /api/tags, GET /api/version
and GET / answer as Ollama does. Every model name is accepted. It is a single
asyncio loop on 127.0.0.1 with keep-alive HTTP/1.1, so thousands of waiting
requests cost it almost nothing. A streamed chat request (the default of
Ollama's API when "stream" is missing) gets 400: the service never streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence
from typing import Any

from app.core.config import DEFAULT_EXAMPLES_PATH
from app.domain.example_bank import load_bank
from bench.common import run_async

SERVER_VERSION = "0.13.0"
TOKEN_LOGPROB = -0.05
MAX_HEAD_BYTES = 65_536


def _json_response(status: int, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def _model_details() -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "135M",
        "quantization_level": "Q4_1",
    }


class SimulatedOllama:
    """The request handling of the simulated server, with its fixed plan and latency."""

    def __init__(self, plan: str, latency_s: float) -> None:
        self.plan = plan
        self.latency_s = latency_s
        tokens = plan.split(" ")
        # Every token but the last carries the space that follows it, so they add up to the plan.
        self._tokens = [token + " " for token in tokens[:-1]] + tokens[-1:]

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve requests on one connection until the client closes it."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                method, path, headers = _parse_request_head(head)
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                writer.write(await self.respond(method, path, body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def respond(self, method: str, path: str, body: bytes) -> bytes:
        """Return the whole HTTP response to one request."""
        route = path.split("?", 1)[0]
        if method == "GET" and route == "/":
            return _json_response(200, "Ollama is running")
        if method == "GET" and route == "/api/version":
            return _json_response(200, {"version": SERVER_VERSION})
        if method == "GET" and route == "/api/tags":
            return _json_response(200, {"models": []})
        if method != "POST" or route not in ("/api/chat", "/api/show"):
            return _json_response(404, {"error": f"{method} {route} not found"})

        try:
            request = json.loads(body)
        except ValueError:
            return _json_response(400, {"error": "invalid JSON body"})
        if not isinstance(request, dict) or not request.get("model"):
            return _json_response(400, {"error": "model is required"})
        if route == "/api/show":
            return _json_response(200, self._show(request["model"]))
        if request.get("stream", True):
            return _json_response(400, {"error": "the simulated server does not stream"})
        await asyncio.sleep(self.latency_s)
        return _json_response(200, self._chat(request))

    def _show(self, model: str) -> dict[str, Any]:
        return {
            "modelfile": f"FROM {model}\n",
            "parameters": "temperature 0",
            "template": "{{ .Prompt }}",
            "details": _model_details(),
            "model_info": {"general.architecture": "llama"},
            "capabilities": ["completion"],
            "modified_at": "2025-01-01T00:00:00Z",
        }

    def _chat(self, request: dict[str, Any]) -> dict[str, Any]:
        prompt_words = sum(
            len(str(message.get("content", "")).split()) for message in request.get("messages", [])
        )
        response: dict[str, Any] = {
            "model": request["model"],
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": self.plan},
            "done": True,
            "done_reason": "stop",
            "total_duration": int(self.latency_s * 1e9),
            "load_duration": 0,
            "prompt_eval_count": prompt_words,
            "prompt_eval_duration": int(self.latency_s * 0.5e9),
            "eval_count": len(self._tokens),
            "eval_duration": int(self.latency_s * 0.5e9),
        }
        if request.get("logprobs") is True:
            response["logprobs"] = [
                {"token": token, "logprob": TOKEN_LOGPROB, "bytes": list(token.encode())}
                for token in self._tokens
            ]
        return response


def _parse_request_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def serve(port: int, latency_s: float) -> None:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    simulated = SimulatedOllama(load_bank(DEFAULT_EXAMPLES_PATH)[0].plan, latency_s)
    server = await asyncio.start_server(
        simulated.handle_connection, "127.0.0.1", port, limit=MAX_HEAD_BYTES, backlog=1024
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    async with server:
        await stopping.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on, on 127.0.0.1")
    parser.add_argument(
        "--latency-ms", type=float, default=200.0, help="time each chat request takes, in ms"
    )
    args = parser.parse_args(argv)
    run_async(serve(args.port, args.latency_ms / 1000))


if __name__ == "__main__":
    main()
