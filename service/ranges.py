"""Range requests on files as RFC 9110 asks, in the API's error shape.

Starlette's ``FileResponse`` serves ranges, but answers a Range header it cannot
parse with a plain-text 400, and one with any range past the end with an empty
416. RFC 9110 (14.2) says a server *ignores* a Range header it does not understand
and sends the whole file, and serves the satisfiable ranges of a set; a request
whose ranges all lie past the end is a 416 that, here, says why as every error does.
"""

from __future__ import annotations

import os
import re

from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import error_json

# One byte range: "first-last", "first-" or "-suffix"; 19 digits reach any file size.
_RANGE_SPEC = re.compile(r"\s*(\d{0,19})-(\d{0,19})\s*")
# Starlette serves the whole file past this many ranges; so, then, do we.
MAX_RANGES = 100


def satisfiable_ranges(header: str, size: int) -> list[str] | None:
    """The ranges of a Range header that ``size`` bytes can serve; None if it is not valid."""
    unit, equals, ranges = header.partition("=")
    if unit.strip().lower() != "bytes" or not equals:
        return None
    specs = ranges.split(",")
    if len(specs) > MAX_RANGES:
        return None
    served = []
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None or match.group(1) == match.group(2) == "":
            return None
        first, last = match.group(1), match.group(2)
        if first and last and int(last) < int(first):
            return None
        if (int(first) < size) if first else (int(last) > 0 and size > 0):
            served.append(f"{first}-{last}")
    return served


class RangeAwareFileResponse(FileResponse):
    """``FileResponse`` that ignores a malformed Range and says why it cannot serve one."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        requested = [value for name, value in scope["headers"] if name == b"range"]
        if requested and self._range_applies(scope):
            size = os.stat(self.path).st_size
            header = requested[0].decode("latin-1")
            served = satisfiable_ranges(header, size) if len(requested) == 1 else None
            if served == []:
                await self._not_satisfiable(header, size)(scope, receive, send)
                return
            others = [(name, value) for name, value in scope["headers"] if name != b"range"]
            # Ignored when not valid, as if not asked; else only the ranges it can serve.
            kept = [] if served is None else [(b"range", f"bytes={','.join(served)}".encode())]
            scope = {**scope, "headers": [*others, *kept]}
        await super().__call__(scope, receive, send)

    def _range_applies(self, scope: Scope) -> bool:
        # If-Range names what the client holds: only a match makes the range count
        # (RFC 9110 13.1.5); otherwise the whole file is sent, as Starlette does.
        if_range = next(
            (v.decode("latin-1") for n, v in scope["headers"] if n == b"if-range"), None
        )
        validators = (self.headers.get("etag"), self.headers.get("last-modified"))
        return if_range is None or (not if_range.startswith("W/") and if_range in validators)

    @staticmethod
    def _not_satisfiable(header: str, size: int) -> Response:
        response = error_json(
            416,
            "range_not_satisfiable",
            f"the Range {header[:100]!r} asks only for bytes past the end of the file "
            f"({size:,} bytes); ask for bytes from 0 to {max(size - 1, 0)}",
        )
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
