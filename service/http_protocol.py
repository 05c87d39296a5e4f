"""uvicorn's fast HTTP parser with the bounds on request heads that it lacks.

uvicorn parses HTTP/1.1 with httptools where it is installed (``uvicorn[standard]``),
and httptools keeps whatever a request head sends: an unauthenticated client could
send 100 MB of one header without ever ending it, four connections took the API from
308 to 689 MB, and a head sent a line every few seconds held its connection for good.
h11, uvicorn's other parser, bounds the head but serves fewer requests a second. This
protocol keeps httptools and closes a connection whose request head passes
``MAX_HEAD_BYTES`` (431, as RFC 6585 names it) or takes longer than
``HEAD_TIMEOUT_SECONDS`` to arrive (408), as nginx's ``large_client_header_buffers``
and ``client_header_timeout`` do.
"""

from __future__ import annotations

import asyncio
from typing import Any

# A dependency (uvicorn[standard], pyproject.toml): the parser that serves /predict fastest.
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Far past any real client's head (browsers send 1-4 KiB with cookies), far below
# anything that costs memory; nginx allows 4 x 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0
# How long a refused connection still reads what its client sends before it closes:
# nginx's lingering_timeout.
LINGER_SECONDS = 5.0


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol that refuses a request head too large (431) or too slow (408).

    At module level, so uvicorn's worker processes can be handed it by name.
    """

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_seconds = HEAD_TIMEOUT_SECONDS
    linger_seconds = LINGER_SECONDS

    def __init__(self, *arguments: Any, **options: Any) -> None:
        super().__init__(*arguments, **options)
        self._head_pending = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._linger_timer: asyncio.TimerHandle | None = None
        # Where in the read being parsed the pending head began: the bytes of requests
        # before it in that read (a pipelining client's) are not the head's.
        self._read_consumed = 0
        self._head_began_at: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte holds a socket too: its first head is due.
        self._start_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what follows a refused head is not read
        self._read_consumed, self._head_began_at = 0, None
        super().data_received(data)
        if self._head_timer is None and self._between_requests():
            # Bytes that began no request (parsers skip empty lines between requests)
            # cancelled uvicorn's keep-alive timer all the same: the next head is due.
            self._start_timer()
        if not self._head_pending or self.transport.is_closing():
            self._head_bytes = 0
            return
        # Data that left a head unfinished: the head so far is at least this long, from
        # where it began in this read (behind a pipelined request's end) or before it.
        self._head_bytes += max(0, len(data) - (self._head_began_at or 0))
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, "the request head is larger than this server accepts")

    def on_message_begin(self) -> None:
        if self._refused:
            return  # a request read behind a refused head is never run
        super().on_message_begin()
        self._head_pending = True
        self._head_bytes = 0
        self._head_began_at = self._read_consumed
        self._start_timer()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._head_pending = False
        self._cancel_timer()
        # A whole head can arrive in one read (asyncio reads up to 256 KiB): measured
        # here too, as parsed, before the request reaches the app.
        head_bytes = self._parsed_head_bytes()
        # Near enough (its framing uncounted): the part of this head in the current read.
        earlier_reads = 0 if self._head_began_at is not None else self._head_bytes
        self._read_consumed += max(0, head_bytes - earlier_reads)
        if head_bytes > self.max_head_bytes:
            self._refuse(431, "the request head is larger than this server accepts")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._read_consumed += len(body)
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def _parsed_head_bytes(self) -> int:
        """The request head's bytes parsed so far: its target and its whole headers."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _start_timer(self) -> None:
        self._cancel_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._too_slow)

    def _between_requests(self) -> bool:
        """No head begun and nothing being answered or waiting to be."""
        if self._head_pending or self._refused or self.transport.is_closing():
            return False
        return self.cycle is None or (self.cycle.response_complete and not self.pipeline)

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._head_pending or self._between_requests():
            self._refuse(408, "the request head did not arrive in time")

    def _cancel_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._head_pending = False
        self._cancel_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelining client's earlier request is still being answered: a refusal
            # written now would cut into that response. It ends it instead, and the
            # connection closes once it is sent.
            self.cycle.keep_alive = False
            return
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = message.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        # Closing while the client's bytes still arrive makes the kernel answer them
        # with a reset, and a reset can discard the refusal before the client reads it.
        # So the close is in stages (RFC 9112, 9.6), as nginx's lingering close does:
        # end our side after the refusal, read and drop what the client still sends,
        # and close when it ends too or after linger_seconds, whichever comes first.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger_timer = self.loop.call_later(self.linger_seconds, self.transport.close)
        else:
            self.transport.close()
