"""Admission control for prediction routes: past a queue depth, answer 503 at once.

Under more load than the models can serve, queueing every request only makes all
of them late; refusing the excess quickly, with ``Retry-After``, keeps the latency
of the admitted ones bounded and tells clients (and load balancers) to back off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from service.errors import OverloadedError


class RequestLimiter:
    """Counts prediction requests in progress; refuses one past ``max_pending``."""

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        # Only touched on the event loop's thread, between awaits: no lock needed.
        self.pending = 0
        self.refused = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for one request; OverloadedError (503) if none is free."""
        if self.pending >= self.max_pending:
            self.refused += 1
            raise OverloadedError(
                f"{self.pending} prediction requests are in progress, the most this server "
                f"queues (DACIAVISION_PREDICT_MAX_PENDING={self.max_pending}); retry after "
                "the Retry-After seconds or add replicas",
                max_pending=self.max_pending,
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1
