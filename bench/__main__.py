"""`make bench`: measure the service against the machine's ceilings, in one run (issue #6).

    python -m bench                   # every scenario (a few minutes)
    python -m bench --smoke           # each scenario for a moment: proves the suite runs (CI)
    python -m bench --only a,c        # some scenarios
    python -m bench --only g,h        # the relay of a real model's stream, against LiteLLM's proxy
    python -m bench --workers 2       # also scenario a with two uvicorn workers
    python -m bench --sse-clients 1000  # scenario e with fewer SSE clients than its 10,000

It starts its own redis-server and servers on free loopback ports, prints a table, writes the figures to
`bench/results/latest.json` (smoke runs: `smoke.json`; g and h alone: `relay.json`) and draws the chart
beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import report
from bench.paced import scenario_h
from bench.processes import ROOT, bench_redis
from bench.relay import scenario_g
from bench.scenarios import Run, scenario_a, scenario_b, scenario_c, scenario_d, scenario_e

RESULTS = ROOT / "bench" / "results"
# h: the paced answers at once each relay is tried with, upwards until one exceeds a bound.
H_LEVELS = {"v1": [25, 50, 100, 200, 400, 700, 1000], "litellm": [5, 10, 25, 50, 100, 200]}
H_SMOKE = {"v1": [5]}


async def run_all(run: Run, only: set[str], workers: int, sse_clients: int) -> dict[str, Any]:
    smoke = run.smoke
    results: dict[str, Any] = {}
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "a": lambda: scenario_a(run, [1, 64] if smoke else [1, 8, 64]),
        "b": lambda: scenario_b(run, *((10, 20) if smoke else (200, 1000))),
        "c": lambda: scenario_c(run, [1, 20] if smoke else [1, 50, 100, 250, 500], think=1.0),
        "d": lambda: scenario_d(run, 50 if smoke else 2000),
        "e": lambda: scenario_e(run, 50 if smoke else sse_clients, 5 if smoke else 100),
        "g": lambda: scenario_g(run, *((1, 1, 20, 4) if smoke else (3, 3, 300, 16))),
        "h": lambda: scenario_h(run, H_SMOKE if smoke else H_LEVELS, 10 if smoke else 150),
    }
    for name, step in steps.items():
        if name not in only:
            continue
        started = time.perf_counter()
        sys.stderr.write(f"bench: scenario {name}...\n")
        results[name] = await step()
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
    if workers > 1 and "a" in only:
        sys.stderr.write(f"bench: scenario a with {workers} workers...\n")
        results["a_workers"] = await scenario_a(run, [64], workers=workers)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run each scenario for a moment (CI)")
    parser.add_argument("--only", default="abcdegh", help="scenarios to run, e.g. a,c (f comes from d and e)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("BENCH_WORKERS", "2")))
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument(
        "--sse-clients", type=int, default=10_000, help="scenario e's SSE clients (on 100 sessions)"
    )
    args = parser.parse_args()
    smoke = args.smoke or os.environ.get("BENCH_SMOKE") == "1"
    only = set(args.only.replace(",", ""))
    # A run of g and h alone has its own file, so that it never overwrites a full run's figures.
    name = "relay.json" if only <= {"g", "h"} else "latest.json"
    out: Path = args.out or RESULTS / ("smoke.json" if smoke else name)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # e's clients are a socket each, here and in the service (which inherits the limit).
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.sse_clients + 4096)), hard))
    with tempfile.TemporaryDirectory(prefix="bench-") as directory:
        redis = bench_redis(Path(directory))
        redis.start()
        run = Run(redis=redis, logs=Path(directory), smoke=smoke)
        started = datetime.now(UTC)
        try:
            results = uvloop.run(run_all(run, only, 1 if smoke else args.workers, args.sse_clients))
        finally:
            run.stop_all()
            redis_version = redis.version() if redis.process else "?"
            redis.stop()
    figures = {
        "date": started.isoformat(timespec="seconds"),
        "smoke": smoke,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "redis": redis_version,
            "platform": platform.platform(),
        },
        "scenarios": results,
        "goals": report.goals(results),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
    written = orjson.loads(out.read_bytes())["scenarios"]
    missing = sorted(name for name in only if name in "abcdegh" and not written.get(name))
    if missing:  # what CI's smoke run asserts: every scenario ran and wrote its figures
        raise SystemExit(f"bench: no figures for scenario {', '.join(missing)}")
    sys.stdout.write(report.table(figures) + "\n")
    sys.stdout.write(f"figures written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}\n")
    if not smoke and ({"a", "c"} <= only or {"g", "h"} <= only):
        chart = out.with_suffix(".png")
        report.chart(figures, chart)
        sys.stdout.write(
            f"chart drawn to {chart.relative_to(ROOT) if chart.is_relative_to(ROOT) else chart}\n"
        )


if __name__ == "__main__":
    main()
