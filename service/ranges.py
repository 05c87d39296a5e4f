"""Range requests on files as RFC 9110 asks, in the API's error shape.

Starlette's ``FileResponse`` serves ranges, but answers a Range header it cannot
parse with a plain-text 400 and an unsatisfiable one with an empty 416. RFC 9110
(14.2) says a server *ignores* a Range header it does not understand and sends the
whole file; a range past the end is a 416 that, here, says why as every error does.
"""

from __future__ import annotations

import os
import re

from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from service.errors import error_json

# One byte range: "first-last", "first-" or "-suffix"; 19 digits reach any file size.
_RANGE_SPEC = r"\s*(\d{0,19})-(\d{0,19})\s*"
_RANGES = re.compile(rf"bytes=({_RANGE_SPEC}(,{_RANGE_SPEC})*)", re.IGNORECASE)


def satisfiable(header: str, size: int) -> bool | None:
    """Whether a Range header can be served from ``size`` bytes; None if it is not valid."""
    match = _RANGES.fullmatch(header.strip())
    if match is None:
        return None
    served = False
    for spec in match.group(1).split(","):
        first, _, last = spec.strip().partition("-")
        if not first and not last:
            return None
        if not first:  # the last N bytes
            served |= int(last) > 0 and size > 0
            continue
        if last and int(last) < int(first):
            return None
        served |= int(first) < size
    return served


class RangeAwareFileResponse(FileResponse):
    """``FileResponse`` that ignores a malformed Range and says why it cannot serve one."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        ranges = [value.decode("latin-1") for name, value in scope["headers"] if name == b"range"]
        if ranges:
            size = os.stat(self.path).st_size
            verdict = satisfiable(ranges[0], size) if len(ranges) == 1 else None
            if verdict is None:
                scope = {**scope, "headers": headers}  # served whole, as if not asked
            elif not verdict:
                response = error_json(
                    416,
                    "range_not_satisfiable",
                    f"the Range {ranges[0][:100]!r} starts past the end of the file "
                    f"({size:,} bytes); ask for bytes from 0 to {max(size - 1, 0)}",
                )
                response.headers["Content-Range"] = f"bytes */{size}"
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
