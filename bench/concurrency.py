"""Throughput with 64 concurrent clients and a simulated model latency of 200 ms.

    poetry run python -m bench.concurrency [--quick] [--clients 64] [--model-latency-ms 200]

With no other cost, each client completes one request per model latency, so
the bound is clients / latency: 64 / 0.2 s = 320 requests per second. Two
variants of the plan service (uvicorn, one worker, 127.0.0.1) are measured
against it, each with a closed loop of that many keep-alive connections:

- `in_process`: the instant small-model backend awaits the latency itself;
- `ollama`: the real Ollama backend (official client, circuit breaker) calls
  `bench.simulated_ollama`, which returns each chat response after the latency;
- `ollama_two_workers`: the same through `python -m app` itself with
  WORKERS=2, as a host with two cores would run it.

The second is the deployed path with one worker, so its rate is
`concurrent_rps`. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    closed_loop,
    cpu_share,
    distinct_utterances,
    free_port,
    load_average,
    plan_requests,
    run_async,
)
from bench.overhead import profile_service, service_args, start_all, stop_all
from bench.serve import ServerProcess

# Target: at least this share of the bound.
TARGET_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class ConcurrencyOptions:
    """The load of the concurrency benchmark."""

    clients: int = 64
    model_latency_ms: float = 200.0
    seconds: float = 30.0  # each variant, after the warm-up
    warmup_s: float = 3.0


QUICK = ConcurrencyOptions(seconds=10.0, warmup_s=1.5)


def bound_rps(options: ConcurrencyOptions) -> float:
    """Return the rate the clients reach when the model latency is the only cost."""
    return options.clients / (options.model_latency_ms / 1000)


def _measure(
    service: ServerProcess,
    options: ConcurrencyOptions,
    model_server: ServerProcess | None = None,
    *,
    service_cpu: bool = True,
) -> dict[str, Any]:
    """Run the closed loop against `service`; add the CPU share each server process used.

    `service_cpu` is False where the service's work happens in child processes
    (WORKERS), whose CPU time the parent's figure would leave out.
    """
    watched = {"service": service if service_cpu else None, "model_server": model_server}
    cpu_before = {name: server.cpu_seconds() for name, server in watched.items() if server}
    started = time.perf_counter()
    result = run_async(
        closed_loop(
            service.port,
            plan_requests(service.port, distinct_utterances()),
            connections=options.clients,
            seconds=options.seconds,
            warmup_s=options.warmup_s,
        )
    )
    wall_s = time.perf_counter() - started
    figures = result.summary()
    figures["share_of_bound"] = round(result.rps / bound_rps(options), 3)
    for name, before in cpu_before.items():
        figures[f"{name}_cpu_share"] = cpu_share(before, watched[name].cpu_seconds(), wall_s)
    if result.rps > 0 and service_cpu:
        # CPU of the service per completed request, warm-up included, which is why it is
        # computed from the share of the whole run and the rate of the measured window.
        figures["service_cpu_ms_per_request"] = round(
            figures["service_cpu_share"] * 1000 / result.rps, 3
        )
    return figures


def plan_service_settings(port: int, ollama_port: int, *, workers: int) -> dict[str, str]:
    """Return the variables that run `python -m app` as the benchmark's other services run."""
    return {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "SMALL_MODEL_BACKEND": "ollama",
        "OLLAMA_HOST": f"http://127.0.0.1:{ollama_port}",
        "LOCAL_MODEL_NAME": "bench-model",
        "LARGE_MODEL_BACKEND": "none",
        "RATE_LIMIT_PER_MINUTE": "0",  # every request comes from one client address
        "RESPONSE_CACHE_TTL_S": "0",
        "BANK_ANSWER_SIMILARITY": "2",  # above 1: every request reaches the small model
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "PYTHON_DOTENV_DISABLED": "1",  # a developer's .env must not change the run
    }


def ollama_servers(options: ConcurrencyOptions, workdir: Path) -> tuple[ServerProcess, ...]:
    """Return the simulated Ollama server and the service that calls it, not yet started."""
    ollama_port, service_port = free_port(), free_port()
    simulated = ServerProcess(
        [
            "bench.simulated_ollama",
            "--port",
            str(ollama_port),
            "--latency-ms",
            str(options.model_latency_ms),
        ],
        ollama_port,
        workdir / "simulated-ollama.log",
    )
    service = ServerProcess(
        service_args(
            service_port, "--small", "ollama", "--ollama-host", f"http://127.0.0.1:{ollama_port}"
        ),
        service_port,
        workdir / "service-ollama.log",
    )
    return simulated, service


def run(options: ConcurrencyOptions, workdir: Path) -> dict[str, Any]:
    """Measure both variants one after the other; return the figures as JSON-ready values."""
    load_before = load_average()
    in_process_port = free_port()
    in_process = ServerProcess(
        service_args(in_process_port, "--model-latency-ms", str(options.model_latency_ms)),
        in_process_port,
        workdir / "service-in-process.log",
    )
    simulated, one_worker = ollama_servers(options, workdir)
    two_workers_port = free_port()
    two_workers = ServerProcess(
        ["app"],
        two_workers_port,
        workdir / "service-two-workers.log",
        settings=plan_service_settings(two_workers_port, simulated.port, workers=2),
    )
    servers = (in_process, simulated, one_worker, two_workers)
    start_all(servers)
    try:
        variants = {
            "in_process": _measure(in_process, options),
            "ollama": _measure(one_worker, options, model_server=simulated),
            "ollama_two_workers": _measure(
                two_workers, options, model_server=simulated, service_cpu=False
            ),
        }
    finally:
        stop_all(servers)

    return {
        "concurrent_rps": variants["ollama"]["rps"],
        "concurrent_bound_rps": bound_rps(options),
        "clients": options.clients,
        "model_latency_ms": options.model_latency_ms,
        **variants,
        "load_average": {"before": load_before, "after": load_average()},
    }


def profile_ollama_variant(options: ConcurrencyOptions, workdir: Path) -> dict[str, Any]:
    """Run the Ollama variant with the service under cProfile; return its hotspots."""
    simulated, _ = ollama_servers(options, workdir)
    with simulated:
        return profile_service(
            workdir,
            extra_args=(
                "--small",
                "ollama",
                "--ollama-host",
                f"http://127.0.0.1:{simulated.port}",
            ),
            sequential_requests=0,
            connections=options.clients,
            seconds=options.seconds,
        )


def describe(result: dict[str, Any]) -> list[str]:
    """Return readable lines for the concurrency figures."""
    lines = []
    for name in ("in_process", "ollama", "ollama_two_workers"):
        variant = result[name]
        cpu = (
            f", service CPU {variant['service_cpu_share']:.0%} of a core "
            f"({variant.get('service_cpu_ms_per_request')} ms per request)"
            if name != "ollama_two_workers"
            else ""
        )
        lines.append(
            f"{name}: {variant['rps']} rps = {variant['share_of_bound']:.0%} of the bound "
            f"{result['concurrent_bound_rps']:g} (target >= {TARGET_SHARE:.0%}), "
            f"p50/p99 {variant.get('p50_ms')}/{variant.get('p99_ms')} ms, "
            f"errors {variant['errors']}{cpu}"
        )
    lines.append(f"load average before/after: {result['load_average']}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s per variant instead of 30 s")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument(
        "--model-latency-ms", type=float, default=200.0, help="simulated model time, in ms"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run the Ollama variant with the service profiled, and print its hotspots",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else ConcurrencyOptions()
    options = ConcurrencyOptions(
        clients=args.clients,
        model_latency_ms=args.model_latency_ms,
        seconds=base.seconds,
        warmup_s=base.warmup_s,
    )
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as folder:
        result = run(options, Path(folder))
        for line in describe(result):
            print(line)
        if args.profile:
            result["profile"] = profile_ollama_variant(options, Path(folder))
            result["profile"].pop("profile_path")
            for row in result["profile"]["app_hotspots"]:
                print(f"hotspot {row}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
