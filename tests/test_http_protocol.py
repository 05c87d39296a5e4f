"""The API's HTTP parser closes request heads too large or too slow, and serves the rest."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from service.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol
from tests.workers import free_port


class QuickToTimeOut(BoundedHttpToolsProtocol):
    head_timeout_seconds = 1.0
    linger_seconds = 0.5


RUN: list[str] = []  # the paths the app was run for


async def echo_app(scope, receive, send):  # type: ignore[no-untyped-def]
    RUN.append(scope["path"])
    if scope["path"] == "/slow":
        await asyncio.sleep(0.5)
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"got %d bytes" % len(body)})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        echo_app, host="127.0.0.1", port=port, http=QuickToTimeOut, log_level="warning",
        lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _exchange(port: int, *chunks: bytes, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        try:
            for chunk in chunks:
                connection.sendall(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: its answer is still to be read
        answer = b""
        while part := connection.recv(65536):
            answer += part
        return answer


def test_a_head_past_the_bound_is_431_and_the_connection_closes(port: int) -> None:
    # The client goes on sending well past the bound, as one uploading a huge header
    # would: bytes that reach a closed socket draw a reset, which must not cost the
    # client the refusal it was sent first.
    never_ending = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    chunks = [never_ending] + [b"a" * 16384] * (4 * MAX_HEAD_BYTES // 16384)
    for _ in range(5):
        answer = _exchange(port, *chunks)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")


def test_a_head_that_dawdles_is_408(port: int) -> None:
    started = time.monotonic()
    answer = _exchange(port, b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", pause=0.6)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert time.monotonic() - started < 5


def test_large_bodies_and_heads_that_arrive_in_pieces_are_served(port: int) -> None:
    body = b"x" * (4 * MAX_HEAD_BYTES)  # a body is bounded elsewhere, not here
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
    # The head split across chunks, the body in the same chunk as the head's end.
    answer = _exchange(port, head[:10], head[10:], b"Connection: close\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 200") and b"got %d bytes" % len(body) in answer
    # Two requests on one connection: the second head's bytes are counted afresh.
    pipelined = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n\r\n"
    last = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _exchange(port, pipelined, pipelined, last, pause=0.1)
    assert answer.count(b"HTTP/1.1 200") == 3


def test_a_whole_head_past_the_bound_in_one_piece_is_431(port: int) -> None:
    # asyncio reads up to 256 KiB at once: the head ends inside one read.
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES + 1024) + b"\r\n\r\n"
    assert _exchange(port, head).startswith(b"HTTP/1.1 431 Request Header Fields Too Large")


def test_a_connection_that_sends_nothing_is_closed_in_time(port: int) -> None:
    started = time.monotonic()
    assert _exchange(port).startswith(b"HTTP/1.1 408 Request Timeout")
    assert time.monotonic() - started < 5


def test_a_refusal_never_cuts_into_a_pipelined_response_in_flight(port: int) -> None:
    slow = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
    oversized = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES + 1024)
    answer = _exchange(port, slow + oversized)
    # The slow request's whole answer, then the connection closes: no 431 inside it.
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"got 0 bytes\r\n0\r\n\r\n")
    assert b"431" not in answer


def test_an_empty_line_after_an_answer_does_not_hold_the_connection(port: int) -> None:
    # Parsers skip empty lines between requests without beginning one, but the bytes
    # still cancel uvicorn's keep-alive timer: the next head is due all the same.
    started = time.monotonic()
    answer = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n", pause=0.3)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408 Request Timeout" in answer
    assert time.monotonic() - started < 5


def test_a_request_behind_a_refused_head_is_never_run(port: int) -> None:
    # One read holds a head past the bound and a whole request behind it: the client
    # was told 431 and to go away, and may send that request again elsewhere.
    RUN.clear()
    oversized = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES + 1024)
    answer = _exchange(port, oversized + b"\r\n\r\nPOST /behind HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and answer.count(b"HTTP/1.1") == 1
    time.sleep(0.3)
    assert "/behind" not in RUN


class CollectingTransport(asyncio.Transport):
    """A socket's stand-in that keeps what the server writes: so a test decides which
    bytes arrive in one read, which a real socket leaves to the kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.ended = False  # our side's end sent (a FIN) while the client's stays open

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.ended = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_head_behind_a_large_pipelined_body_in_one_read_counts_only_its_own_bytes() -> None:
    # One read holds a request with a body four times the bound and the start of the
    # next request's head; the head is small, so neither request is refused.
    body = b"x" * (4 * MAX_HEAD_BYTES)
    first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    second = b"GET / HTTP/1.1\r\nHost: x\r\n"

    async def exchange() -> bytes:
        config = uvicorn.Config(
            echo_app, http=BoundedHttpToolsProtocol, lifespan="off", access_log=False
        )
        config.load()
        protocol = BoundedHttpToolsProtocol(
            config=config, server_state=uvicorn.server.ServerState(), app_state={}
        )
        transport = CollectingTransport()
        protocol.connection_made(transport)
        protocol.data_received(first + second)
        await asyncio.sleep(0.1)
        protocol.data_received(b"Connection: close\r\n\r\n")
        await asyncio.sleep(0.1)
        protocol.connection_lost(None)
        return transport.written

    answer = asyncio.run(exchange())
    assert b"431" not in answer
    assert answer.count(b"HTTP/1.1 200") == 2
    assert b"got %d bytes" % len(body) in answer and b"\r\ngot 0 bytes\r\n" in answer


def test_a_refused_connection_reads_on_and_closes_after_lingering() -> None:
    async def exchange() -> list[tuple[bool, bool]]:
        config = uvicorn.Config(echo_app, http=QuickToTimeOut, lifespan="off", access_log=False)
        config.load()
        protocol = QuickToTimeOut(
            config=config, server_state=uvicorn.server.ServerState(), app_state={}
        )
        transport = CollectingTransport()
        protocol.connection_made(transport)
        states = []
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES)
        states.append((transport.ended, transport.closed))
        protocol.data_received(b"a" * MAX_HEAD_BYTES)  # read and dropped, no answer
        await asyncio.sleep(QuickToTimeOut.linger_seconds + 0.2)
        states.append((transport.ended, transport.closed))
        protocol.connection_lost(None)
        assert transport.written.count(b"HTTP/1.1") == 1
        return states

    # Ended our side at once, still open to read; closed once the lingering is over.
    assert asyncio.run(exchange()) == [(True, False), (True, True)]
