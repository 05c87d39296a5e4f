"""Load: 20,000 single-image ``/predict`` calls at concurrency 64 while a job trains.

The scenario of ``bench/load_scenario.py`` at full size, driven by Debian's
``hey``: the API (``daciavision serve``) and one Celery worker run as local
processes against a Redis server of their own; two versions of an MNIST
``custom_cnn`` are registered; while the worker trains the lab's MNIST model
(25%, 15 epochs), ``hey`` posts one MNIST test digit as a PNG upload again and
again, and ``production`` moves 1 → 2 → 1 under the load. Every non-2xx answer
and every transport error is an error.

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.load [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import (
    DEFAULT_DATA_DIR,
    DEFAULT_DOC,
    CpuMeter,
    cpu_flags,
    cpu_model,
    nproc,
    package_versions,
    require_hey,
    update_doc,
)
from bench.load_scenario import LoadResult, LoadTarget, ScenarioConfig, ScenarioResult, run_scenario
from bench.processes import Process, free_port, wait_until
from worker.settings import Settings

KEY = "load"
TITLE = "Load: /predict at concurrency 64 while a job trains and the alias moves twice"
MODEL_NAME = "bench-load-mnist"
BOUNDARY = "daciavision-load-bench"
# Other processes' share of the CPU from which a run counts as disturbed (as in the harness).
BUSY_SHARE = 0.05
# Versions 1 and 2: the lab's custom_cnn on 10% of MNIST, one epoch each (seconds to train).
VERSION_SPEC = {"dataset": "mnist", "architecture": "custom_cnn", "sample_fraction": 0.1}
# The lab's MNIST training (25%, 15 epochs): long enough to outlast the load.
JOB_SPEC = {
    "dataset": "mnist",
    "architecture": "custom_cnn",
    "sample_fraction": 0.25,
    "epochs": 15,
    "model_name": MODEL_NAME,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Settings().data_dir or DEFAULT_DATA_DIR,
        help="Directory holding mnist.npz (default: DATA_DIR, else %(default)s).",
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--redis-url",
        help="Use this Redis database, which is flushed before and after (default: start a "
        "private redis-server on a free port).",
    )
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="Markdown file to update.")
    parser.add_argument("--no-doc", action="store_true", help="Print the figures only.")
    return parser.parse_args(argv)


def multipart_body(png: bytes) -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="files"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    return head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def hey_driver(target: LoadTarget) -> LoadResult:
    """Run ``hey`` with one PNG upload; every request that is not a 2xx row is an error."""
    with tempfile.NamedTemporaryFile(prefix="load-", suffix=".multipart") as body:
        body.write(multipart_body(target.pngs[0]))
        body.flush()
        command = [
            "hey", "-n", str(target.requests), "-c", str(target.concurrency), "-m", "POST",
            "-T", f"multipart/form-data; boundary={BOUNDARY}", "-D", body.name, "-o", "csv",
            target.url,
        ]  # fmt: skip
        started = time.monotonic()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"hey failed ({completed.returncode}): {completed.stderr[-2000:]}")
    rows = list(csv.DictReader(io.StringIO(completed.stdout)))
    statuses = Counter(int(row["status-code"]) for row in rows)
    succeeded = [row for row in rows if 200 <= int(row["status-code"]) < 300]
    # hey's CSV has a row per answered request only; transport errors are missing rows.
    samples = [f"{count} × HTTP {status}" for status, count in statuses.items() if status >= 300]
    if len(rows) < target.requests:
        samples.append(f"{target.requests - len(rows)} transport errors (no answer)")
    ends = [float(row["offset"]) + float(row["response-time"]) for row in rows]
    return LoadResult(
        requests=target.requests,
        errors=target.requests - len(succeeded),
        latencies=[float(row["response-time"]) for row in succeeded],
        wall_seconds=max(ends) if ends else wall,
        error_samples=samples,
    )


@contextmanager
def private_redis(home: Path) -> Iterator[str]:
    """A redis-server of this run's own, without persistence; stopped afterwards."""
    port = free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
               "--appendonly", "no"]  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    server = Process(command, {"PATH": "/usr/bin:/bin:/usr/local/bin"}, home / "redis.log")
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

        def pings() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(pings, timeout=20, what="redis-server to start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


@contextmanager
def redis_database(url: str | None, home: Path) -> Iterator[str]:
    if url is None:
        with private_redis(home) as private:
            yield private
        return
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()


def figures(result: ScenarioResult, concurrency: int) -> list[tuple[str, str]]:
    """The run's figures as (label, value) rows."""
    load = result.load
    first, second = result.versions
    moves = "; ".join(
        f"{move.from_version} → {move.to_version} after {move.predictions_before:,} images "
        f"(HTTP {move.status}, {move.finished - move.started:.2f} s)"
        for move in result.moves
    )
    served = ", ".join(
        f"v{version}: {count:,}" for version, count in sorted(result.predictions_by_version.items())
    )
    history = ", ".join(
        f"{entry['from_version']} → {entry['to_version']}" for entry in result.alias_history
    )
    job = result.job
    covered = (
        "it trained from before the load began until after it ended"
        if result.job_covered_load
        else "it did **not** train for the whole load"
    )
    job_text = (
        f"{job['status']} ({len(job.get('history') or [])} epochs, registered as "
        f"v{job['version']}); {covered} (status at the load's start: "
        f"{result.job_status_at_load_start}, at its end: {result.job_status_at_load_end})"
    )
    errors = f"{load.errors:,}" + (f" ({'; '.join(load.error_samples)})" if load.errors else "")
    latency = ", ".join(
        f"p{round(share * 100)} {load.percentile(share) * 1000:.0f} ms"
        for share in (0.5, 0.9, 0.99)
    )
    return [
        ("Requests", f"{load.requests:,} single-image PNG uploads to `POST /predict`"),
        ("Concurrency", f"{concurrency} connections (`hey -c {concurrency}`)"),
        ("Errors (non-2xx or no answer)", errors),
        ("Throughput", f"{load.throughput:,.0f} requests/s ({load.wall_seconds:.1f} s)"),
        ("Latency", f"{latency}, max {max(load.latencies, default=0) * 1000:.0f} ms"),
        ("`production` moves under load", moves),
        ("Images classified", f"{served} (v{first} before and after the moves, v{second} between)"),
        ("`production` history", history),
        ("Training job", job_text),
    ]


def section(
    result: ScenarioResult, concurrency: int, command: str, started: datetime, load_line: str
) -> str:
    rows = "\n".join(f"| {label} | {value} |" for label, value in figures(result, concurrency))
    libraries = package_versions(
        "tensorflow-cpu", "keras", "numpy", "fastapi", "uvicorn", "celery", "redis"
    )
    return f"""<!-- bench:{KEY}:start -->
## {TITLE}

- **When:** {started:%Y-%m-%d %H:%M} UTC
- **Machine:** {nproc()} CPU cores (`nproc`), {cpu_model()}; {cpu_flags()}
- **Load:** {load_line}
- **Libraries:** {libraries}; {tool_versions()}
- **Deployment:** `daciavision serve` (one uvicorn process, default settings: dynamic
  batching on) and one Celery worker, on loopback, against a private Redis; the client,
  the API, the worker's training and Redis share the same {nproc()} cores
- **Data:** MNIST (`mnist.npz` from the data directory); versions 1 and 2 are
  `custom_cnn` with the lab's defaults on 10% of MNIST, 1 epoch, seeds 1 and 2; every
  request uploads the first test digit as a PNG (`hey` repeats one body); the job is the
  lab's MNIST training, `custom_cnn` on 25% for 15 epochs

| Figure | Value |
|---|---|
{rows}

Latency is per request as `hey` measured it (connect, send, wait, read), over the
successful requests. `hey` sends n ÷ c requests on each connection, so the request
count is the smallest multiple of the concurrency from the asked number.

Reproduce from the project root:

```
{command}
```
<!-- bench:{KEY}:end -->
"""


def tool_versions() -> str:
    """The versions of the programs besides Python: redis-server and hey."""
    redis_version = _output(["redis-server", "--version"]).partition("v=")[2].split(" ")[0]
    hey_version = _output(["dpkg-query", "-W", "-f", "${Version}", "hey"])
    return f"redis-server {redis_version or '?'}, hey {hey_version or '?'} (Debian package)"


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    require_hey()
    if not (args.data_dir / "mnist.npz").is_file():
        raise SystemExit(
            f"{args.data_dir / 'mnist.npz'} is missing: set DATA_DIR (or --data-dir) to a folder "
            "holding mnist.npz with the arrays x_train, y_train, x_test, y_test"
        )
    # hey sends requests // concurrency on each connection; ask for a multiple.
    requests = math.ceil(args.requests / args.concurrency) * args.concurrency
    command = shlex.join(
        ["flock", "/tmp/daciavision-bench.lock", ".venv/bin/python", "-m", "bench.load",
         *(argv if argv is not None else sys.argv[1:])]
    )  # fmt: skip
    if Settings().data_dir is not None:  # the data came from DATA_DIR: say so
        command = f"DATA_DIR={shlex.quote(str(Settings().data_dir))} {command}"
    started = datetime.now(UTC)
    meter = CpuMeter()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        home = Path(scratch)
        with redis_database(args.redis_url, home / "redis") as redis_url:
            config = ScenarioConfig(
                home=home / "home",
                redis_url=redis_url,
                data_dir=args.data_dir,
                model_name=MODEL_NAME,
                version_specs=({**VERSION_SPEC, "seed": 1}, {**VERSION_SPEC, "seed": 2}),
                job_spec=JOB_SPEC,
                requests=requests,
                concurrency=args.concurrency,
                job_timeout=1800,
            )
            result = run_scenario(config, hey_driver, log=lambda line: print(line, flush=True))
    cpu = meter.stop()
    verdict = (
        "**busy: other processes competed for the cores, the figures are pessimistic**"
        if cpu.others >= BUSY_SHARE
        else "quiet"
    )
    load_line = (
        f"{verdict}. During the run other processes used {cpu.others:.0%} of the machine's "
        f"CPU time and this one with its servers, worker and `hey` {cpu.own:.0%}"
    )
    print()
    for label, value in figures(result, args.concurrency):
        print(f"{label}: {value}")
    print(f"Load: {load_line}")
    if not args.no_doc:
        update_doc(args.doc, KEY, section(result, args.concurrency, command, started, load_line))
        print(f"updated {args.doc}")
    if result.load.errors or result.job["status"] != "succeeded" or len(result.moves) != 2:
        raise SystemExit("the load run failed: see the figures above")


if __name__ == "__main__":
    main()
