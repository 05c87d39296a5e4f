"""A fast path for the commonest upload: one small file in a multipart form.

Starlette's streaming parser calls back into Python for every header and chunk and
spools each file through a temporary file object: for a 3 KB PNG that costs more
than the model call. A body of one part, whose headers are the two every client
sends, is cut apart here with a few byte searches instead. Anything else — several
parts, text fields, other headers, quoted or non-ASCII file names, a missing closing
delimiter — returns None, and the caller hands the body to the full parser, which
answers every malformed body with its own clear 4xx.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Bodies up to this size (declared in Content-Length) may take the fast path: they are
# read whole, so the per-file limit is checked after reading at most this much.
SIMPLE_MULTIPART_MAX_BYTES = 256 * 1024

_BOUNDARY_RE = re.compile(rb'boundary=(?:"([^"]{1,70})"|([^\s";]{1,70}))', re.IGNORECASE)
_DISPOSITION_RE = re.compile(rb'form-data; name="([A-Za-z0-9_-]+)"; filename="([ -!#-\[\]-~]+)"')
_CONTENT_TYPE_RE = re.compile(rb"[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+")


@dataclass(frozen=True)
class SimplePart:
    field: str
    filename: str
    data: bytes


def multipart_boundary(content_type: bytes) -> bytes | None:
    """The boundary parameter of a multipart/form-data content type, if plainly given."""
    match = _BOUNDARY_RE.search(content_type)
    if match is None:
        return None
    return match.group(1) or match.group(2)


def parse_single_file(body: bytes, boundary: bytes) -> SimplePart | None:
    """The one file part of ``body``, or None when the body is anything but that."""
    delimiter = b"--" + boundary
    opening = delimiter + b"\r\n"
    closing = b"\r\n" + delimiter + b"--"
    if not body.startswith(opening):
        return None
    end = len(body) - 2 if body.endswith(b"\r\n") else len(body)
    if not body.startswith(closing, end - len(closing)) or end - len(closing) < len(opening):
        return None
    part_end = end - len(closing)
    # A second part would begin with CRLF and the delimiter, which file data cannot hold.
    if body.find(b"\r\n" + delimiter, len(opening), part_end) != -1:
        return None
    headers_end = body.find(b"\r\n\r\n", len(opening), part_end)
    if headers_end == -1:
        return None
    disposition = content_type = None
    for line in body[len(opening) : headers_end].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if not colon:
            return None
        if name == b"content-disposition" and disposition is None:
            disposition = _DISPOSITION_RE.fullmatch(value)
            if disposition is None:
                return None
        elif name == b"content-type" and content_type is None:
            if _CONTENT_TYPE_RE.fullmatch(value) is None:
                return None
            content_type = value
        else:
            return None
    if disposition is None:
        return None
    return SimplePart(
        field=disposition.group(1).decode(),
        filename=disposition.group(2).decode(),
        data=body[headers_end + 4 : part_end],
    )
