"""Load generation with Debian's ``hey``, and how much of the CPU others used meanwhile."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.harness import CpuMeter


def _tree_seconds(root: int) -> float:
    """CPU seconds of a live contender: its session and every descendant of ``root``.

    Both, because BentoML's process manager starts its workers in sessions of their own.
    """
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            pid = int(stat.parent.name)
            parents[pid], sessions[pid] = int(fields[1]), int(fields[3])
            ticks[pid] = int(fields[11]) + int(fields[12])
    members = {pid for pid, session in sessions.items() if session == root} | {root}
    growing = True
    while growing:
        found = {pid for pid, parent in parents.items() if parent in members} - members
        members |= found
        growing = bool(found)
    return sum(ticks.get(pid, 0) for pid in members) / os.sysconf("SC_CLK_TCK")


# -- load generation --------------------------------------------------------------------


@dataclass
class LoadResult:
    """One hey run: throughput, latency percentiles (ms), errors, and the CPU share."""

    requests: int
    seconds: float
    percentiles: dict[int, float]
    errors: int
    error_lines: list[str]
    others_cpu: float = 0.0
    own_cpu: float = 0.0
    images_per_request: int = 1

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.rate * self.images_per_request

    def summary(self) -> str:
        p = self.percentiles
        return (
            f"{self.rate:.1f} req/s, p50 {p.get(50, float('nan')):.1f} ms, "
            f"p99 {p.get(99, float('nan')):.1f} ms, {self.errors} errors "
            f"(others used {self.others_cpu:.0%} of the CPU)"
        )


def parse_hey(output: str) -> LoadResult:
    """Figures from hey's text summary (its percentiles are of successful requests)."""
    seconds = float(re.search(r"Total:\s+([\d.]+) secs", output).group(1))  # type: ignore[union-attr]
    percentiles = {
        int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", output)
    }
    statuses = {
        int(code): int(count)
        for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)
    }
    error_lines = []
    errors = sum(count for code, count in statuses.items() if code != 200)
    if "Error distribution:" in output:
        for line in output.split("Error distribution:", 1)[1].strip().splitlines():
            if match := re.match(r"\s*\[(\d+)\]\s+(.*)", line):
                errors += int(match.group(1))
                error_lines.append(line.strip()[:200])
    # Only answers that served the request count towards throughput: a fast error is not
    # a prediction. ``requests + errors`` is then every request sent.
    requests = statuses.get(200, 0)
    return LoadResult(requests, seconds, percentiles, errors, error_lines)


def run_hey(
    url: str,
    body: Path,
    content_type: str,
    *,
    concurrency: int,
    seconds: float | None = None,
    requests: int | None = None,
    session: int | None = None,
) -> LoadResult:
    command = ["hey", "-m", "POST", "-T", content_type, "-D", str(body), "-c", str(concurrency)]
    command += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]
    # The contender's processes are still running, so their CPU seconds count as ours here.
    contender_seconds = (lambda: _tree_seconds(session)) if session else None
    with CpuMeter(contender_seconds) as meter:
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    result = parse_hey(output)
    result.others_cpu, result.own_cpu = meter.use.others, meter.use.own
    return result
