"""Several API server processes on one port, as uvicorn's workers, with shared telemetry.

One process serves JSON batches with its cores partly idle: its model calls share the
cores with decoding, and its threads take turns at one interpreter lock (measured on
two cores with one batch thread per model: the lock held 58% of the time, 48% by the
event loop, the cores 20% idle). A second process has its own batch threads and lock
and fills that idle time; but clients are spread over the
processes by connection, and each process loads the models it serves, so whether it
pays depends on the load (docs/operations.md).

Prometheus counters live in each process. With several, prometheus_client's
multiprocess mode keeps them in files of one folder, and a scrape of any process sums
them all (``service.monitoring``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from pydantic import TypeAdapter, ValidationError

from trainer.errors import InvalidInputError
from worker.settings import Settings

# prometheus_client reads it when imported, so it must be set before the servers start.
TELEMETRY_FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def api_process_count(requested: int | None, settings: Settings) -> int:
    """The ``--api-processes`` option if given, within the setting's bounds; else the setting."""
    if requested is None:
        return settings.api_processes
    field = Settings.model_fields["api_processes"]
    try:
        count: int = TypeAdapter(Annotated[int, *field.metadata]).validate_python(requested)
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        raise InvalidInputError(f"--api-processes {requested}: {reason}") from None
    return count


@contextmanager
def shared_telemetry(settings: Settings) -> Iterator[Path]:
    """A fresh telemetry folder for this server's processes, removed when it stops."""
    folder = settings.home / "run" / f"prometheus-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)  # a crashed server's, whose pid came back
    folder.mkdir(parents=True)
    previous = os.environ.get(TELEMETRY_FOLDER_VARIABLE)
    os.environ[TELEMETRY_FOLDER_VARIABLE] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(TELEMETRY_FOLDER_VARIABLE, None)
        else:
            os.environ[TELEMETRY_FOLDER_VARIABLE] = previous
        shutil.rmtree(folder, ignore_errors=True)
