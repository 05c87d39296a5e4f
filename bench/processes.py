"""Child processes of the service for the load benchmarks and the tests that start them.

Here rather than under ``tests/`` because the benchmarks run the same processes the
tests do, and a benchmark should not depend on the test suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_environment(home: Path, redis_url: str | None, **extra: str) -> dict[str, str]:
    """This environment without the service's own settings, pointed at ``home``."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DACIAVISION_")
        and key not in {"REDIS_URL", "DATA_DIR", "REGISTRY_DIR"}
    }
    environment.update(
        DACIAVISION_HOME=str(home),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}:{environment.get('PATH', '')}",
    )
    if redis_url:
        environment["REDIS_URL"] = redis_url
    environment.update(extra)
    return environment


class Process:
    """A child process in its own process group, with its output kept in a file."""

    def __init__(self, command: list[str], environment: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            command, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and every child it forked (a crash of the whole worker)."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._log.close()


@contextmanager
def running(processes: list[Process]) -> Iterator[list[Process]]:
    """Stop every process afterwards; print their logs when the caller failed."""
    try:
        yield processes
    except BaseException:
        for process in processes:
            print(f"----- {' '.join(process.command)}\n{process.log()[-6000:]}")
        raise
    finally:
        for process in processes:
            process.stop()
