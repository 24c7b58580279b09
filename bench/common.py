"""Shared parts of the benchmarks: a light HTTP load client, percentiles, utterances, machine.

The load client writes raw HTTP/1.1 requests on asyncio streams and reads the
responses by Content-Length (or chunked encoding), over keep-alive connections.
It costs far less per request than an HTTP library, so on a 2-core machine the
service, not the client, sets the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import pstats
import socket
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SMCALFLOW_DIR = REPO_ROOT.parent / "shared" / "data" / "smcalflow"
DEV_DIALOGUES = SMCALFLOW_DIR / "dev.dataflow_dialogues.jsonl"
BANK_DIALOGUES = SMCALFLOW_DIR / "bank.dataflow_dialogues.jsonl"
PLAN_PATH = "/api/inference/generate-plan"

# Used when the SMCalFlow dev dialogues are not on this machine.
BUILTIN_UTTERANCES = (
    "Who is my manager?",
    "What is on my calendar tomorrow?",
    "Schedule lunch with Jennifer tomorrow at noon",
    "Cancel my 3pm meeting",
    "Set up a dentist appointment on Thursday at 9am",
    "Book a design review with Marcus and Elena next Wednesday at 2 pm",
    "What time is my dentist appointment?",
    "Move my meeting with Priya to Friday",
    "Do I have anything on Saturday?",
    "Add a one hour focus block every morning this week",
    "Who is attending the budget review?",
    "Make it an hour later",
    "Yes, that works",
    "No, schedule it for the afternoon instead",
    "When is my next one on one with Kim?",
    "Create a team standup at 9:30 every weekday",
    "Delete the event called project sync",
    "What's the weather going to be like on Sunday?",
    "Am I free on Monday afternoon?",
    "Find a time for coffee with Abby next week",
    "Who is Jennifer's manager?",
    "Put a reminder to call mom on Sunday evening",
    "Change the location of my lunch to the cafeteria",
    "How long is my meeting with the sales team?",
    "Invite Dan and Sarah to the planning session",
    "Decline the invitation from Mark",
    "Accept the offsite meeting on Tuesday",
    "Show me my events for next Friday",
    "Schedule a call with the vendor at 4pm tomorrow",
    "What did I have on my calendar last Thursday?",
    "Book a conference room for 10 people on Wednesday morning",
    "Reschedule the dentist to next month",
    "Is there anything after 5pm today?",
    "Set up dinner with my team on Friday night at 7",
    "Extend my 2pm meeting by thirty minutes",
    "Who organized the all hands?",
    "Make the review private",
    "Create an event named yoga on Saturday at 8am",
    "When does my flight leave?",
    "Add Ryan to my lunch tomorrow",
    "Remove Tom from the design sync",
    "What is the weather in Seattle this weekend?",
    "Block two hours on Thursday for writing",
    "Tell me about my first meeting on Monday",
    "Cancel everything I have on Friday afternoon",
    "Who are my direct reports?",
    "Schedule a haircut at 11 on Saturday",
    "Plan a birthday party for Emma on the 14th",
    "Set my status meeting to repeat every two weeks",
    "Thanks, that's all",
)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Requests of one closed-loop run that completed inside its measured window."""

    connections: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    error_examples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Requests completed with status 200 inside the window."""
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        """Requests completed with status 200 per second of the window."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, float | int | list[str]]:
        """Return the figures of the run as JSON-ready values."""
        figures: dict[str, float | int | list[str]] = {
            "connections": self.connections,
            "seconds": round(self.seconds, 2),
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            **latency_percentiles(self.latencies_ms),
        }
        if self.error_examples:
            figures["error_examples"] = self.error_examples
        return figures


class HttpError(Exception):
    """A response the load client cannot use: a broken or unexpected HTTP exchange."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared POST requests."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw_request: bytes) -> tuple[int, bytes]:
        """Send one complete request and return the status code and body of its response."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader = self._reader
        assert reader is not None
        self._writer.write(raw_request)
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers = _parse_head(head)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            raise HttpError(f"response without Content-Length or chunked body (status {status})")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError):  # the server may have closed its end first
            await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpError(f"invalid status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    pieces: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailer fields, up to the blank line
            return b"".join(pieces)
        pieces.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk


def post_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """Return the bytes of a keep-alive HTTP/1.1 POST with a JSON body."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def plan_requests(port: int, utterances: Sequence[str], host: str = "127.0.0.1") -> list[bytes]:
    """Return one prepared plan request per utterance."""
    return [
        post_request(host, port, PLAN_PATH, json.dumps({"utterance": utterance}).encode())
        for utterance in utterances
    ]


# Exceptions a failed exchange raises: refused or reset connections, a response cut
# short, a head that never ends, an unparseable head, or a timeout.
_EXCHANGE_ERRORS = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    HttpError,
    ValueError,
    TimeoutError,
)


async def closed_loop(
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    warmup_s: float = 0.5,
    timeout_s: float = 30.0,
    host: str = "127.0.0.1",
) -> LoadResult:
    """Keep `connections` requests in flight for warmup_s + seconds; measure the last `seconds`.

    Each connection sends its next request as soon as the previous response
    arrives, cycling through `requests` from its own offset. Only requests that
    complete after the warm-up and before the end count. A non-200 status or a
    failed exchange counts as an error, and the connection is opened again.
    """
    started = time.perf_counter()
    window_start = started + warmup_s
    window_end = window_start + seconds
    latencies_ms: list[float] = []
    errors = 0
    error_examples: list[str] = []

    def record_error(description: str, finished: float) -> None:
        nonlocal errors
        if window_start <= finished <= window_end:
            errors += 1
            if len(error_examples) < 5:
                error_examples.append(description)

    async def run_connection(offset: int) -> None:
        connection = HttpConnection(host, port)
        position = offset
        try:
            while time.perf_counter() < window_end:
                raw_request = requests[position % len(requests)]
                position += connections
                sent = time.perf_counter()
                try:
                    async with asyncio.timeout(timeout_s):
                        status, body = await connection.request(raw_request)
                except _EXCHANGE_ERRORS as error:
                    record_error(f"{type(error).__name__}: {error}"[:200], time.perf_counter())
                    await connection.close()
                    continue
                finished = time.perf_counter()
                if status != 200:
                    record_error(f"status {status}: {body[:150]!r}", finished)
                elif window_start <= finished <= window_end:
                    latencies_ms.append((finished - sent) * 1000)
        finally:
            await connection.close()

    await asyncio.gather(*(run_connection(offset) for offset in range(connections)))
    return LoadResult(connections, seconds, latencies_ms, errors, error_examples)


async def sequential_latencies(
    port: int,
    requests: Sequence[bytes],
    *,
    count: int,
    warmup: int = 100,
    timeout_s: float = 30.0,
    host: str = "127.0.0.1",
) -> list[float]:
    """Send `warmup` then `count` requests one after another on one connection.

    Returns the latencies of the `count` measured requests in milliseconds.
    Raises HttpError on the first failed request, because a latency probe
    with gaps would not be comparable.
    """
    connection = HttpConnection(host, port)
    latencies_ms: list[float] = []
    try:
        for index in range(warmup + count):
            raw_request = requests[index % len(requests)]
            sent = time.perf_counter()
            async with asyncio.timeout(timeout_s):
                status, body = await connection.request(raw_request)
            elapsed_ms = (time.perf_counter() - sent) * 1000
            if status != 200:
                raise HttpError(f"request {index} to port {port} got {status}: {body[:200]!r}")
            if index >= warmup:
                latencies_ms.append(elapsed_ms)
    finally:
        await connection.close()
    return latencies_ms


def cpu_share(cpu_before: float, cpu_after: float, wall_s: float) -> float:
    """Return the share of one core a process used: CPU seconds over wall-clock seconds."""
    return round((cpu_after - cpu_before) / wall_s, 3) if wall_s > 0 else 0.0


def run_async(coroutine):  # type: ignore[no-untyped-def]
    """Run a coroutine on uvloop when it is installed (it comes with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of already sorted values (fraction in [0, 1])."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_percentiles(latencies_ms: Sequence[float], prefix: str = "") -> dict[str, float]:
    """Return p50, p90, p99 and max of a latency sample in ms, rounded to 0.001 ms."""
    if not latencies_ms:
        return {}
    ordered = sorted(latencies_ms)
    return {
        f"{prefix}p50_ms": round(statistics.median(ordered), 3),
        f"{prefix}p90_ms": round(percentile(ordered, 0.90), 3),
        f"{prefix}p99_ms": round(percentile(ordered, 0.99), 3),
        f"{prefix}max_ms": round(ordered[-1], 3),
    }


def distinct_utterances(limit: int = 2000) -> list[str]:
    """Return up to `limit` distinct user utterances of the SMCalFlow dev dialogues, in order.

    Falls back to BUILTIN_UTTERANCES when the dev file is not on this machine.
    """
    if not DEV_DIALOGUES.is_file():
        return list(BUILTIN_UTTERANCES)
    seen: dict[str, None] = {}
    with DEV_DIALOGUES.open(encoding="utf-8") as file:
        for line in file:
            for turn in json.loads(line)["turns"]:
                utterance = turn["user_utterance"]["original_text"].strip()
                if utterance:
                    seen.setdefault(utterance, None)
            if len(seen) >= limit:
                break
    return list(seen)[:limit]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that no socket uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine() -> dict[str, str | int]:
    """Describe the machine: CPU model, usable cores, memory and Python version."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    description: dict[str, str | int] = {
        "cpu": cpu,
        "cores": cores or 1,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kb = int(meminfo.read_text().split("MemTotal:", 1)[1].split()[0])
        description["memory_gib"] = round(total_kb / 1024 / 1024, 1)
    return description


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return [round(value, 2) for value in os.getloadavg()]


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Measure a block: the yielded list contains its duration in seconds afterwards."""
    elapsed: list[float] = []
    started = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.append(time.perf_counter() - started)


def hotspots(profile_path: Path, limit: int = 15, under: str | None = "app/") -> list[dict]:
    """Return the functions with the most own time in a cProfile dump.

    Only files under `under` (relative to the repository) count, and None
    counts every file. Each entry has the function, its calls, its own time
    (`tottime_ms`) and its time with callees (`cumtime_ms`), over the whole
    profiled run.
    """
    stats = pstats.Stats(str(profile_path))
    marker = str(REPO_ROOT / under) if under is not None else ""
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if not filename.startswith(marker):
            continue
        rows.append(
            {
                "function": f"{_short_path(filename)}:{line}:{name}",
                "calls": calls,
                "tottime_ms": round(tottime * 1000, 1),
                "cumtime_ms": round(cumtime * 1000, 1),
            }
        )
    rows.sort(key=lambda row: row["tottime_ms"], reverse=True)
    return rows[:limit]


def _short_path(filename: str) -> str:
    """Shorten a file name to its path in the repository or in site-packages."""
    if filename.startswith(str(REPO_ROOT)):
        return str(Path(filename).relative_to(REPO_ROOT))
    _, separator, inside = filename.partition("site-packages/")
    return inside if separator else filename
