"""Service overhead per request with instant model backends, against a bare FastAPI endpoint.

    poetry run python -m bench.overhead [--quick] [--profile]

Starts three servers with `bench.serve` (uvicorn, one worker, 127.0.0.1):
the plan service with the instant backends and the response cache off, the
same with the cache on, and the baseline endpoint that returns a constant.
Then measures, on the same machine in the same run:

- latency of sequential requests on one keep-alive connection, after a
  warm-up, in blocks that alternate between the servers so that a change in
  the machine's load hits them alike. Overhead is the service's percentile
  minus the baseline's, at p50 and at p99. The cached server gets a few
  utterances, repeated, so every measured request is a cache hit;
- the maximum sustained requests per second of one worker: closed loops of
  several connection counts, the best run without errors.

With --profile, a fourth service runs under cProfile through one sequential
probe and one closed loop, and the functions of app/ with the most own time
are printed. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import (
    closed_loop,
    cpu_share,
    distinct_utterances,
    free_port,
    hotspots,
    latency_percentiles,
    load_average,
    plan_requests,
    run_async,
    sequential_latencies,
)
from bench.serve import ServerProcess

# Targets of the service: overhead at most 1 ms at p50 and 5 ms at p99.
TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0
CACHED_UTTERANCES = 50


@dataclass(frozen=True, slots=True)
class OverheadOptions:
    """How long each measurement of the overhead benchmark runs."""

    sequential_requests: int = 4000  # per server, after the warm-up
    warmup_requests: int = 300
    blocks: int = 8  # the sequential requests are sent in this many alternating blocks
    rps_seconds: float = 6.0  # each closed-loop run, after its warm-up
    rps_warmup_s: float = 1.0
    connection_counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    cached: bool = True


QUICK = OverheadOptions(
    sequential_requests=1200,
    warmup_requests=200,
    blocks=4,
    rps_seconds=3.0,
    rps_warmup_s=0.5,
    connection_counts=(2, 8, 32),
)


def service_args(port: int, *extra: str) -> list[str]:
    """Return the `python -m` arguments of a plan service on `port`."""
    return ["bench.serve", "--mode", "service", "--port", str(port), *extra]


def baseline_args(port: int) -> list[str]:
    """Return the `python -m` arguments of the baseline server on `port`."""
    return ["bench.serve", "--mode", "baseline", "--port", str(port)]


def start_all(servers: Sequence[ServerProcess]) -> None:
    """Start the servers together and wait until each listens; stop them all on failure."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_until_listening()
    except BaseException:
        stop_all(servers)
        raise


def stop_all(servers: Sequence[ServerProcess]) -> None:
    """Stop every server, even when stopping one fails."""
    failures: list[BaseException] = []
    for server in servers:
        try:
            server.stop()
        except Exception as error:  # noqa: BLE001 (the others must still be stopped)
            failures.append(error)
    if failures:
        raise failures[0]


async def _sequential_blocks(
    servers: dict[str, tuple[int, list[bytes]]], options: OverheadOptions
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    per_block = max(options.sequential_requests // options.blocks, 1)
    for block in range(options.blocks):
        for name, (port, requests) in servers.items():
            warmup = options.warmup_requests if block == 0 else 10
            latencies[name] += await sequential_latencies(
                port, requests, count=per_block, warmup=warmup
            )
    return latencies


def max_rps(
    server: ServerProcess, requests: list[bytes], options: OverheadOptions
) -> dict[str, Any]:
    """Run one closed loop per connection count; return each run and the best without errors.

    Each run also records the share of a core the server used, and its CPU
    time per completed request.
    """
    runs = []
    for connections in options.connection_counts:
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        result = run_async(
            closed_loop(
                server.port,
                requests,
                connections=connections,
                seconds=options.rps_seconds,
                warmup_s=options.rps_warmup_s,
            )
        )
        figures = result.summary()
        figures["cpu_share"] = cpu_share(
            cpu_before, server.cpu_seconds(), time.perf_counter() - started
        )
        if result.rps > 0:
            figures["cpu_ms_per_request"] = round(figures["cpu_share"] * 1000 / result.rps, 3)
        runs.append(figures)
    clean = [run for run in runs if run["errors"] == 0 and run["requests"] > 0]
    best = max(clean, key=lambda run: run["rps"]) if clean else None
    return {
        "max_rps": best["rps"] if best else None,
        "max_rps_connections": best["connections"] if best else None,
        "max_rps_cpu_share": best["cpu_share"] if best else None,
        "runs": runs,
    }


def run(options: OverheadOptions, workdir: Path) -> dict[str, Any]:
    """Measure the service against the baseline; return the figures as JSON-ready values."""
    utterances = distinct_utterances()
    ports = {"service": free_port(), "baseline": free_port()}
    if options.cached:
        ports["cached"] = free_port()
    servers = {
        "service": ServerProcess(
            service_args(ports["service"]), ports["service"], workdir / "service.log"
        ),
        "baseline": ServerProcess(
            baseline_args(ports["baseline"]), ports["baseline"], workdir / "baseline.log"
        ),
    }
    if options.cached:
        servers["cached"] = ServerProcess(
            service_args(ports["cached"], "--cache-ttl-s", "3600"),
            ports["cached"],
            workdir / "cached.log",
        )
    requests = {
        name: plan_requests(
            port, utterances[:CACHED_UTTERANCES] if name == "cached" else utterances
        )
        for name, port in ports.items()
    }

    load_before = load_average()
    start_all(list(servers.values()))
    try:
        latencies = run_async(
            _sequential_blocks({name: (ports[name], requests[name]) for name in ports}, options)
        )
        throughput = {
            name: max_rps(servers[name], requests[name], options)
            for name in ("service", "baseline")
        }
    finally:
        stop_all(list(servers.values()))

    figures = {name: latency_percentiles(sample) for name, sample in latencies.items()}
    result: dict[str, Any] = {
        "overhead_p50_ms": round(figures["service"]["p50_ms"] - figures["baseline"]["p50_ms"], 3),
        "overhead_p99_ms": round(figures["service"]["p99_ms"] - figures["baseline"]["p99_ms"], 3),
        "max_rps": throughput["service"]["max_rps"],
        "baseline_max_rps": throughput["baseline"]["max_rps"],
        "sequential_requests": {name: len(sample) for name, sample in latencies.items()},
        "service": {**figures["service"], **throughput["service"]},
        "baseline": {**figures["baseline"], **throughput["baseline"]},
        "utterances": len(utterances),
        "load_average": {"before": load_before, "after": load_average()},
    }
    if options.cached:
        result["cached"] = figures["cached"]
        result["cached_overhead_p50_ms"] = round(
            figures["cached"]["p50_ms"] - figures["baseline"]["p50_ms"], 3
        )
    return result


def profile_service(
    workdir: Path,
    *,
    extra_args: Sequence[str] = (),
    sequential_requests: int = 1000,
    connections: int = 16,
    seconds: float = 5.0,
    limit: int = 20,
) -> dict[str, Any]:
    """Run a service under cProfile through a sequential probe and a closed loop.

    Returns the run's figures and the hotspots of the service's own code
    (app/), by own time. Profiling slows the service, so only the ranking
    and the shares are meaningful, not the absolute times.
    """
    port = free_port()
    profile_path = workdir / f"service-{port}.prof"
    server = ServerProcess(
        service_args(port, *extra_args, "--profile", str(profile_path)),
        port,
        workdir / "profiled.log",
    )
    requests = plan_requests(port, distinct_utterances())
    with server:
        if sequential_requests:
            run_async(sequential_latencies(port, requests, count=sequential_requests, warmup=50))
        load = run_async(closed_loop(port, requests, connections=connections, seconds=seconds))
    return {
        "profiled_load": load.summary(),
        "app_hotspots": hotspots(profile_path, limit=limit),
        "all_hotspots": hotspots(profile_path, limit=limit, under=None),
        "profile_path": str(profile_path),
    }


def describe(result: dict[str, Any]) -> list[str]:
    """Return readable lines for the overhead figures."""
    service, baseline = result["service"], result["baseline"]
    lines = [
        f"sequential p50/p99: service {service['p50_ms']:.3f}/{service['p99_ms']:.3f} ms, "
        f"baseline {baseline['p50_ms']:.3f}/{baseline['p99_ms']:.3f} ms",
        f"overhead p50 {result['overhead_p50_ms']:.3f} ms (target <= {TARGET_P50_MS:g}), "
        f"p99 {result['overhead_p99_ms']:.3f} ms (target <= {TARGET_P99_MS:g})",
        f"max sustained rps, one worker: service {result['max_rps']} "
        f"(at {service['max_rps_connections']} connections, "
        f"{service['max_rps_cpu_share']:.0%} of a core), "
        f"baseline {result['baseline_max_rps']} (at {baseline['max_rps_connections']}, "
        f"{baseline['max_rps_cpu_share']:.0%} of a core)",
    ]
    if "cached" in result:
        cached = result["cached"]
        lines.append(
            f"cached responses p50/p99: {cached['p50_ms']:.3f}/{cached['p99_ms']:.3f} ms "
            f"(overhead p50 {result['cached_overhead_p50_ms']:.3f} ms)"
        )
    lines.append(f"load average before/after: {result['load_average']}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, about 30 s in all")
    parser.add_argument(
        "--profile", action="store_true", help="also profile the service and print its hotspots"
    )
    parser.add_argument("--no-cache", action="store_true", help="skip the cached-response server")
    args = parser.parse_args(argv)
    options = QUICK if args.quick else OverheadOptions()
    if args.no_cache:
        options = replace(options, cached=False)

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder:
        result = run(options, Path(folder))
        for line in describe(result):
            print(line)
        if args.profile:
            # The profile is written into the temporary folder, so only its summary is kept.
            result["profile"] = profile_service(Path(folder))
            result["profile"].pop("profile_path")
            for row in result["profile"]["app_hotspots"]:
                print(f"hotspot {row}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
