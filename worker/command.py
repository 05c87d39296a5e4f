"""The command that starts a training worker: one definition for the CLI, serve and tests."""

from __future__ import annotations

import sys

from worker.app import TRAINING_QUEUE


def celery_worker_command(
    *, node_name: str = "worker@%h", concurrency: int = 1, loglevel: str = "INFO"
) -> list[str]:
    """``celery worker`` for the training queue, run by this Python."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--concurrency", str(concurrency), "--loglevel", loglevel,
        "--queues", TRAINING_QUEUE, "--hostname", node_name, "-O", "fair",
        # Jobs are coordinated by the job store, not by worker-to-worker chatter.
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
