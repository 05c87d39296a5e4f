"""Our server under two settings, side by side: which one serves faster on this host.

``bench.serve`` measures each contender once, in turn; on a shared virtual machine whose
speed drifts by a third within minutes, two such runs cannot tell a 10% difference
from the drift. Here both servers run at once (on different ports, the same model
files and bodies as ``bench.serve``) and hey drives them in turn, in short alternating
rounds, the order swapped every round: whatever the host does, it does to both. Each
round gives one ratio, candidate over baseline; the median ratio and the rounds the
candidate won are the figures. The server not being driven sits idle (no request, no
CPU).

Settings are environment variables of the server (``DACIAVISION_...``, see
``worker/settings.py``), plus ``api_processes=N`` for ``uvicorn --workers N``:

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.serve_settings \\
        --candidate DACIAVISION_BATCH_THREADS=3 --workload json

A change of code is compared the same way: ``--baseline-checkout`` runs the baseline on
another checkout of the project, such as ``git worktree add /tmp/before HEAD~1``.

It prints every round and rewrites the "Serving settings side by side" section of
docs/benchmarks.md (the last comparison run).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    DEFAULT_DATA_DIR,
    DEFAULT_DOC,
    PROJECT_ROOT,
    cpu_flags,
    cpu_model,
    locked_command,
    nproc,
    publish,
    require_hey,
)
from bench.serve import DEFAULT_CACHE_DIR
from bench.serving.contenders import Contender, our_server, started
from bench.serving.hey import LoadResult, run_hey
from bench.serving.workload import (
    BATCH_IMAGES,
    CONCURRENCY,
    Bodies,
    prepare_bodies,
    prepare_model,
)

KEY = "serve-settings"
PORTS = {"baseline": 8194, "candidate": 8195}
API_PROCESSES = "api_processes"
# Concurrency per workload, as bench.serve drives them.
WORKLOADS = {"json": 4, "single": CONCURRENCY, "idle": 1}


@dataclass(frozen=True)
class Side:
    name: str
    settings: dict[str, str]
    # The checkout of the project whose code this server runs, with this checkout's
    # virtual environment: another one is a `git worktree` of another commit.
    checkout: Path = PROJECT_ROOT

    def describe(self, with_code: bool) -> str:
        settings = ", ".join(f"`{k}={v}`" for k, v in self.settings.items()) or "the defaults"
        if not with_code:
            return settings
        return f"{settings}; the code of `{self.checkout}` at {commit_of(self.checkout)}"


def commit_of(checkout: Path) -> str:
    """The checkout's commit, short, and whether its files differ from it."""
    git = ["git", "-C", str(checkout)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return f"{commit} with uncommitted changes" if changed else commit


@dataclass
class Round:
    baseline: LoadResult
    candidate: LoadResult

    @property
    def ratio(self) -> float:
        return self.candidate.rate / self.baseline.rate


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise SystemExit(f"a setting is NAME=VALUE, got {pair!r}")
        settings[name] = value
    return settings


def server(side: Side, registry_dir: Path, home: Path) -> Contender:
    settings = dict(side.settings)
    api_processes = int(settings.pop(API_PROCESSES, "1"))
    return our_server(
        side.name, PORTS[side.name], registry_dir, home / side.name, api_processes,
        settings, side.checkout,
    )  # fmt: skip


@dataclass(frozen=True)
class Running:
    url: str
    session: int  # the server's process group, whose CPU counts as this run's own


def drive(server: Running, bodies: Bodies, workload: str, seconds: float) -> LoadResult:
    if workload == "json":
        body, content_type = bodies.batch_json, "application/json"
    else:
        body = bodies.single_png
        content_type = f"multipart/form-data; boundary={bodies.boundary}"
    return run_hey(
        server.url, body, content_type, concurrency=WORKLOADS[workload], seconds=seconds,
        session=server.session,
    )  # fmt: skip


@contextlib.contextmanager
def both_running(
    sides: Sequence[Side], registry_dir: Path, bodies: Bodies, log_dir: Path
) -> Iterator[dict[str, Running]]:
    with (
        tempfile.TemporaryDirectory(prefix="home-", dir=log_dir) as home,
        contextlib.ExitStack() as stack,
    ):
        servers = {}
        for side in sides:
            contender = server(side, registry_dir, Path(home))
            running = stack.enter_context(started(contender, bodies, log_dir))
            servers[side.name] = Running(contender.url, running.process.pid)
        yield servers


def compare(args: argparse.Namespace, sides: Sequence[Side]) -> list[Round]:
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    registry_dir = prepare_model(args.cache_dir, args.data_dir)
    bodies = prepare_bodies(args.cache_dir, args.data_dir)
    log_dir = args.cache_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    rounds: list[Round] = []
    with both_running(sides, registry_dir, bodies, log_dir) as servers:
        for side in sides:  # warm-up: every code path the rounds meet
            drive(servers[side.name], bodies, args.workload, 3)
        for number in range(args.rounds):
            order = list(sides) if number % 2 == 0 else list(reversed(sides))
            results = {
                side.name: drive(servers[side.name], bodies, args.workload, args.seconds)
                for side in order
            }
            measured = Round(results["baseline"], results["candidate"])
            rounds.append(measured)
            print(
                f"round {number + 1}: baseline {measured.baseline.summary()}; candidate "
                f"{measured.candidate.summary()}; candidate/baseline {measured.ratio:.3f}",
                flush=True,
            )
    return rounds


def section(sides: Sequence[Side], rounds: Sequence[Round], args: argparse.Namespace) -> str:
    others = max(
        result.others_cpu
        for measured in rounds
        for result in (measured.baseline, measured.candidate)
    )
    ratios = [measured.ratio for measured in rounds]
    wins = sum(ratio > 1 for ratio in ratios)
    workload = {
        "json": f"{BATCH_IMAGES} PNG as JSON per request, concurrency 4",
        "single": f"1 PNG per request, concurrency {CONCURRENCY}",
        "idle": "1 PNG per request, one at a time",
    }[args.workload]
    with_code = len({side.checkout.resolve() for side in sides}) > 1
    rows = []
    for side in sides:
        results = [getattr(measured, side.name) for measured in rounds]
        rate = statistics.median(result.rate for result in results)
        p50 = statistics.median(result.percentiles.get(50, float("nan")) for result in results)
        p99 = statistics.median(result.percentiles.get(99, float("nan")) for result in results)
        errors = sum(result.errors for result in results)
        described = f"{side.name}: {side.describe(with_code)}"
        rows.append(f"| {described} | {rate:,.1f} | {p50:.2f} | {p99:.2f} | {errors} |")
    table = "\n".join(rows)
    return f"""## Serving settings side by side

- **When:** {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
- **Machine:** {nproc()} CPU cores, {cpu_model()}; {cpu_flags()}
- **Load:** other processes used at most {others:.0%} of the machine's CPU time during
  a round
- **Workload:** {workload}; {args.rounds} rounds of {args.seconds:g} s per server, the
  order swapped every round, both servers running throughout (`bench.serve`'s model
  and bodies)

| Server | Requests/s (median of rounds) | p50 ms | p99 ms | Errors |
|---|---|---|---|---|
{table}

Candidate over baseline, requests/s: median **{statistics.median(ratios):.3f}×** over
{len(ratios)} rounds (from {min(ratios):.3f}× to {max(ratios):.3f}×); the candidate
served more in {wins} of {len(ratios)}."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument(
        "--baseline", nargs="*", default=[], metavar="NAME=VALUE",
        help="Settings of the baseline server (default: none, the defaults).",
    )  # fmt: skip
    parser.add_argument(
        "--candidate", nargs="*", default=[], metavar="NAME=VALUE",
        help=f"Settings of the candidate server; {API_PROCESSES}=N for uvicorn --workers N.",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-checkout", type=Path, metavar="PATH",
        help="Run the baseline on the code of another checkout of the project, such as a "
        "`git worktree add` of an earlier commit (with this checkout's virtual environment).",
    )  # fmt: skip
    parser.add_argument("--workload", choices=list(WORKLOADS), default="json")
    parser.add_argument("--rounds", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="Length of each run (%(default)s)."
    )
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--no-doc", action="store_true", help="Print the figures only.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        raise SystemExit("--rounds must be at least 1 and --seconds above 0")
    if not args.candidate and not args.baseline and args.baseline_checkout is None:
        raise SystemExit("nothing to compare: give --candidate, --baseline or --baseline-checkout")
    require_hey()
    sides = [
        Side("baseline", parse_settings(args.baseline), args.baseline_checkout or PROJECT_ROOT),
        Side("candidate", parse_settings(args.candidate)),
    ]
    rounds = compare(args, sides)
    text = section(sides, rounds, args)
    publish(KEY, text, locked_command("bench.serve_settings", argv), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
