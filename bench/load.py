"""Steady load on the service, with the small model simulated by a slow Ollama-protocol server.

    poetry run python -m bench.load --rate 20 --seconds 30 --model-latency-ms 200

Starts the local Ollama-protocol server of the test suite and the service
(uvicorn, one worker) on 127.0.0.1, and sends plan requests at a fixed rate
from one client. Prints one JSON object: requests sent, errors, latency
percentiles, the rate achieved, and the process's resident memory at the
start, the end and its peak. Loopback only, bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from app.core.config import Settings
from app.main import create_app
from tests.support.fake_ollama import FakeOllama, ScriptedReply

MODEL = "plan-model"
UTTERANCES = (
    "Who is my manager?",
    "What is on my calendar tomorrow?",
    "Schedule lunch with Jennifer tomorrow at noon",
    "Cancel my 3pm meeting",
)


def resident_mb() -> float:
    """Return this process's resident memory in MiB, from /proc."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / (1024 * 1024)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def drive(
    url: str, rate: float, seconds: float, ollama: FakeOllama
) -> tuple[list[float], list[int], list[float]]:
    """Send requests every 1/rate seconds; return latencies, statuses and memory samples.

    Memory is sampled once a second, after the simulated server clears its
    record of requests, so that the samples reflect the service and the client.
    """
    latencies: list[float] = []
    statuses: list[int] = []
    memory: list[float] = []

    async def one(client: httpx.AsyncClient, index: int) -> None:
        started = time.perf_counter()
        try:
            response = await client.post(
                f"{url}/api/inference/generate-plan",
                json={"utterance": UTTERANCES[index % len(UTTERANCES)]},
            )
            statuses.append(response.status_code)
        except httpx.HTTPError:
            statuses.append(0)
        latencies.append((time.perf_counter() - started) * 1000)

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=256)) as client:
        tasks = []
        start = time.perf_counter()
        index = 0
        while (elapsed := time.perf_counter() - start) < seconds:
            tasks.append(asyncio.create_task(one(client, index)))
            index += 1
            if index % max(int(rate), 1) == 0:
                ollama.clear_requests()
                memory.append(resident_mb())
            await asyncio.sleep(max(0.0, index / rate - elapsed))
        await asyncio.gather(*tasks)
    ollama.clear_requests()
    memory.append(resident_mb())
    return latencies, statuses, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the run")
    parser.add_argument(
        "--model-latency-ms", type=float, default=200.0, help="simulated model time"
    )
    args = parser.parse_args()

    delay_s = args.model_latency_ms / 1000

    def reply(_request: dict) -> ScriptedReply:
        return ScriptedReply(delay_s=delay_s)

    with FakeOllama(models=[MODEL], responder=reply) as ollama:
        settings = Settings(
            _env_file=None,
            small_model_backend="ollama",
            ollama_host=ollama.url,
            local_model_name=MODEL,
            large_model_backend="none",
            bank_answer_similarity=2.0,  # every request goes to the simulated model
            rate_limit_per_minute=0,
            log_level="WARNING",
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        start_mb = resident_mb()
        try:
            latencies, statuses, memory = asyncio.run(
                drive(f"http://127.0.0.1:{port}", args.rate, args.seconds, ollama)
            )
        finally:
            server.should_exit = True
            thread.join(timeout=10)

    latencies.sort()
    print(
        json.dumps(
            {
                "rate_per_s": args.rate,
                "seconds": args.seconds,
                "model_latency_ms": args.model_latency_ms,
                "requests": len(statuses),
                "errors": sum(status != 200 for status in statuses),
                "achieved_rate_per_s": round(len(statuses) / args.seconds, 2),
                "latency_p50_ms": round(statistics.median(latencies), 1),
                "latency_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
                "rss_start_mb": round(start_mb, 1),
                "rss_end_mb": round(memory[-1], 1),
                "rss_max_mb": round(max(memory), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
