"""Idempotency keys: a retried ``POST /jobs`` or ``POST /studies`` never trains twice.

A client that loses the answer to a POST (a timeout, a reset connection, a 503 after the
job was stored) cannot tell whether the job exists. With an ``Idempotency-Key`` header, as
in Stripe's API and the IETF HTTPAPI draft of that name, the retry returns what the first
request created. The key is not stored anywhere: the new job's or study's id is derived
from it (and from the API key that sent it, so that two clients' keys never meet), so the
stores' own "this id is taken" check is the atomic test, in SQLite and Redis alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Header, Request, Response

from service.security import presented_key
from trainer.errors import ConflictError, DaciaVisionError, InvalidInputError, NotFoundError

# Stripe's limit; a UUID (36 characters) is what clients are told to send.
MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
Record = TypeVar("Record")


class IdempotencyKeyReusedError(DaciaVisionError):
    code = "idempotency_key_reused"


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        # Quotes included: the IETF draft sends the key as a structured-field string.
        max_length=MAX_KEY_LENGTH + 2,
        description="A unique key, e.g. a UUID: 1 to 255 visible ASCII characters without "
        "spaces or double quotes, optionally in double quotes. A retry with "
        "the same key and the same body returns what the first request created (with "
        f"`{REPLAYED_HEADER}: true`) instead of creating it again; the same key with a "
        "different body is a 422.",
    ),
]


def derived_id(request: Request, idempotency_key: str | None) -> str | None:
    """The id the key's job or study gets, or None (a random id) without a key."""
    if idempotency_key is None:
        return None
    key = _unquoted(idempotency_key)
    # The API key's digest, not the key, and a separator neither can contain.
    sender = hashlib.sha256((presented_key(request.headers) or "").encode()).hexdigest()
    return hashlib.sha256(f"{sender}\n{key}".encode()).hexdigest()[:32]


def _unquoted(header: str) -> str:
    key = header[1:-1] if len(header) >= 2 and header[0] == header[-1] == '"' else header
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" and c != '"' for c in key):
        raise InvalidInputError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters without "
            "spaces or double quotes, optionally in double quotes; a UUID is a good key",
            field="header.Idempotency-Key",
            received=header,
        )
    return key


@dataclass(frozen=True)
class Replay(Generic[Record]):
    """How to find what a key created before: a job or a study."""

    kind: str  # "job" or "study", as messages and error details name it
    load: Callable[[str], Record]  # raises NotFoundError for an id never used
    request_of: Callable[[Record], dict[str, Any]]  # the body it was created from

    def find(self, record_id: str | None, received: dict[str, Any]) -> Record | None:
        """What ``record_id`` names, if anything; 422 when it came from another body."""
        if record_id is None:
            return None
        try:
            record = self.load(record_id)
        except NotFoundError:
            return None
        if self.request_of(record) != received:
            raise IdempotencyKeyReusedError(
                f"this Idempotency-Key first created {self.kind} {record_id} from a different "
                "request body; send a new key to create a new one, or the first body to read "
                "it back",
                **{f"{self.kind}_id": record_id},
            )
        return record

    def create(
        self, record_id: str | None, received: dict[str, Any], store: Callable[[], None]
    ) -> Record | None:
        """Run ``store``; None when it stored, or the record a simultaneous request with
        the same key stored first."""
        try:
            store()
        except ConflictError:
            if (existing := self.find(record_id, received)) is None:
                raise
            return existing
        return None


def mark_replayed(response: Response, replayed: bool) -> None:
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
