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
from typing import Annotated, Any

from fastapi import Header, Request, Response

from service.security import presented_key
from trainer.errors import DaciaVisionError, InvalidInputError

# Stripe's limit; a UUID (36 characters) is what clients are told to send.
MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"


class IdempotencyKeyReusedError(DaciaVisionError):
    code = "idempotency_key_reused"


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        # Quotes included: the IETF draft sends the key as a structured-field string.
        max_length=MAX_KEY_LENGTH + 2,
        description="Any unique string, e.g. a UUID, at most 255 characters. A retry with "
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
            "spaces or quotes, optionally in double quotes; a UUID is a good key",
            field="header.Idempotency-Key",
            received=header,
        )
    return key


def check_same_request(
    kind: str, record_id: str, stored: dict[str, Any], received: dict[str, Any]
) -> None:
    """IdempotencyKeyReusedError (422) when a key comes back with a different body."""
    if stored != received:
        raise IdempotencyKeyReusedError(
            f"this Idempotency-Key first created {kind} {record_id} from a different request "
            "body; send a new key to create a new one, or the first body to read it back",
            **{f"{kind}_id": record_id},
        )


def mark_replayed(response: Response, replayed: bool) -> None:
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
