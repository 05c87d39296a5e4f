"""Bounded requests, against uvicorn over a real socket.

An ASGI wrapper outside the app counts the body bytes uvicorn hands over, so each
test measures what the server read, not what the client managed to push into
kernel buffers. Image decoding, JSON parsing, timeouts and probes are checked the
same way: by trying to break them.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image, ImageFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.deps import get_registry
from service.errors import UnsupportedMediaTypeError
from service.images import image_pixels
from tests.conftest import make_record
from tests.workers import free_port, wait_until
from trainer.registry import FileModelRegistry
from worker import sqlite_file
from worker.settings import Settings

MODEL = "fake"
# What a server may read past a limit: one read from the socket (asyncio reads up to
# 256 KiB at a time) plus a multipart boundary.
SLACK = 256 * 1024 + 1024
LIMITS: dict[str, Any] = {
    "max_upload_bytes": 32 * 1024,
    "max_request_bytes": 2 * 1024 * 1024,
    "max_json_body_bytes": 64 * 1024,
    "max_instances": 8,
}


@dataclass
class Exchange:
    path: str
    body_bytes: int = 0
    status: int | None = None
    body: bytes = b""
    finished: bool = False


@dataclass
class Recorder:
    """Outermost ASGI layer: what the server read and what it answered, per request."""

    app: ASGIApp
    exchanges: list[Exchange] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(scope["path"])
        self.exchanges.append(exchange)

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                exchange.body_bytes += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            elif message["type"] == "http.response.body":
                exchange.body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        finally:
            exchange.finished = True

    def last(self, path: str) -> Exchange:
        """The latest finished exchange on ``path`` (the client may see the answer first)."""

        def finished() -> Exchange | None:
            matching = [exchange for exchange in self.exchanges if exchange.path == path]
            return matching[-1] if matching and matching[-1].finished else None

        found: Exchange = wait_until(finished, timeout=10, what=f"{path} to finish", interval=0.02)
        return found


def register_fake_model(home: Path) -> None:
    # The limits act before any model is loaded: a placeholder file is enough.
    registry = FileModelRegistry(home / "registry")
    registry.register(MODEL, lambda path: path.write_bytes(b"not a model"), make_record())


@dataclass
class Server:
    port: int
    recorder: Recorder

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve(app: ASGIApp) -> Iterator[Server]:
    recorder = Recorder(app)
    port = free_port()
    config = uvicorn.Config(recorder, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="uvicorn to start", interval=0.05)
    try:
        yield Server(port, recorder)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    register_fake_model(tmp_path)
    return tmp_path


@pytest.fixture
def server(home: Path) -> Iterator[Server]:
    with serve(create_app(Settings(home=home, **LIMITS))) as running_server:
        yield running_server


def post_raw(
    port: int, path: str, content_type: str, chunks: Iterable[bytes], length: int | None = None
) -> int | None:
    """POST a body chunk by chunk over a raw socket; the status, if one came back.

    Without ``length`` the body is sent chunked, so only the server's running count
    can stop it. Sending stops when the server closes the connection.
    """
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    head.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            for chunk in chunks:
                framed = chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                connection.sendall(framed)
            if length is None:
                connection.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: exactly what a limit should do
        try:
            answer = connection.recv(4096)
        except OSError:
            return None
    first_line = answer.split(b"\r\n", 1)[0].split()
    return int(first_line[1]) if len(first_line) > 1 else None


def pieces(total: int, size: int = 64 * 1024, fill: bytes = b"A") -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield fill * piece
        sent += piece


def assert_refused(server: Server, path: str, client_status: int | None, most: int) -> None:
    exchange = server.recorder.last(path)
    assert exchange.status == 413, exchange
    assert json.loads(exchange.body)["detail"]["code"] == "payload_too_large"
    assert exchange.body_bytes <= most, f"read {exchange.body_bytes} bytes, limit+slack {most}"
    assert client_status in (413, None)  # the client may see the close before the answer


def multipart(filename: str, size: int) -> tuple[str, Iterator[bytes]]:
    boundary = "limitsboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from pieces(size)
        yield f"\r\n--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", body()


def test_a_file_fifty_times_over_its_limit_is_cut_off_while_streaming(server: Server) -> None:
    size = 50 * LIMITS["max_upload_bytes"]
    assert size < LIMITS["max_request_bytes"]  # only the per-file limit can stop it
    content_type, body = multipart("huge.png", size)
    status = post_raw(server.port, f"/predict?model_name={MODEL}", content_type, body)
    assert_refused(server, "/predict", status, LIMITS["max_upload_bytes"] + SLACK)
    assert "huge.png" in json.loads(server.recorder.last("/predict").body)["detail"]["message"]


def test_a_20_mb_json_instance_is_refused_after_at_most_the_request_limit(server: Server) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"instances": [{"b64": "'
        yield from pieces(20 * 1024 * 1024)
        yield b'"}]}'

    status = post_raw(server.port, f"/predict?model_name={MODEL}", "application/json", body())
    assert_refused(server, "/predict", status, LIMITS["max_request_bytes"] + SLACK)


def test_the_tf_serving_route_is_bounded_too(server: Server) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"instances": ['
        yield from pieces(20 * 1024 * 1024, fill=b"0,")
        yield b"0]}"

    path = f"/v1/models/{MODEL}:predict"
    status = post_raw(server.port, path, "application/json", body())
    assert_refused(server, path, status, LIMITS["max_request_bytes"] + SLACK)


def test_a_20_mb_job_spec_is_refused_after_at_most_the_json_limit(server: Server) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"dataset": "digits", "model_name": "'
        yield from pieces(20 * 1024 * 1024)
        yield b'"}'

    status = post_raw(server.port, "/jobs", "application/json", body())
    assert_refused(server, "/jobs", status, LIMITS["max_json_body_bytes"] + SLACK)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/jobs").json()["total"] == 0


def test_a_declared_length_over_the_limit_is_refused_before_reading(server: Server) -> None:
    size = 20 * 1024 * 1024
    for path in ("/jobs", "/models/fake/aliases/production", f"/predict?model_name={MODEL}"):
        status = post_raw(server.port, path, "application/json", pieces(size), length=size)
        exchange = server.recorder.last(path.split("?")[0])
        assert exchange.status == 413 and status in (413, None)
        assert exchange.body_bytes == 0


def test_a_request_past_its_time_limit_answers_504(home: Path) -> None:
    app = create_app(Settings(home=home, request_timeout_seconds=0.5))
    with serve(app) as running, socket.create_connection(("127.0.0.1", running.port)) as slow:
        # Slow loris: a body announced and never sent.
        slow.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        slow.settimeout(10)
        started = time.monotonic()
        answer = b""
        while b'"request_timeout"' not in answer and (chunk := slow.recv(4096)):
            answer += chunk
        assert time.monotonic() - started < 5
        assert answer.startswith(b"HTTP/1.1 504")
        assert b'"request_timeout"' in answer


def test_probes_answer_while_the_shared_thread_pool_is_full(home: Path) -> None:
    app = create_app(Settings(home=home))
    release = threading.Event()

    def stuck_registry() -> FileModelRegistry:
        # A synchronous dependency: it holds one of the shared pool's threads.
        release.wait(30)
        return FileModelRegistry(home / "registry")

    app.dependency_overrides[get_registry] = stuck_registry
    with serve(app) as running, ThreadPoolExecutor(max_workers=48) as pool:
        stuck = [pool.submit(httpx.get, f"{running.url}/models", timeout=60) for _ in range(46)]
        wait_until(
            lambda: sum(e.path == "/models" for e in running.recorder.exchanges) >= 46,
            timeout=20,
            what="the pool to fill",
        )
        try:
            for path in ("/health/live", "/health/ready"):
                response = httpx.get(f"{running.url}{path}", timeout=5)
                assert response.status_code == 200, (path, response.text)
        finally:
            release.set()
        assert all(future.result().status_code == 200 for future in stuck)


# ------------------------------------------------------------------- images: pixel budget


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts pixel decodes (header reads do not decode)."""
    calls: list[int] = []
    original = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile) -> Any:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return calls


def test_png_sizes_are_read_as_pillow_reads_them() -> None:
    for width, height in [(1, 1), (32, 32), (3, 700), (4000, 4000)]:
        assert image_pixels(png(width, height), "x") == width * height
    # Anything odd goes to Pillow, which names the file it cannot read.
    broken = png(8, 8)[:16] + b"\0" * 8
    with pytest.raises(UnsupportedMediaTypeError, match="'x' is not a readable image"):
        image_pixels(broken, "'x'")
    with pytest.raises(UnsupportedMediaTypeError):
        image_pixels(png(8, 8)[:20], "x")


def test_a_pixel_bomb_is_refused_from_its_header(home: Path, decodes: list[int]) -> None:
    bomb = png(4000, 4000)  # 16 megapixels
    assert len(bomb) < 100 * 1024
    client = TestClient(create_app(Settings(home=home)))
    upload = client.post(
        "/predict", params={"model_name": MODEL}, files={"files": ("bomb.png", bomb, "image/png")}
    )
    assert upload.status_code == 413, upload.text
    assert upload.json()["detail"]["max_pixels"] == 4_000_000
    as_json = client.post(
        "/predict",
        params={"model_name": MODEL},
        json={"instances": [{"b64": base64.b64encode(bomb).decode()}]},
    )
    assert as_json.status_code == 413, as_json.text
    tf_serving = client.post(
        f"/v1/models/{MODEL}:predict",
        json={"instances": [{"b64": base64.b64encode(bomb).decode()}]},
    )
    assert tf_serving.status_code == 413, tf_serving.text
    assert decodes == []


def test_the_pixels_of_a_whole_request_are_budgeted(home: Path, decodes: list[int]) -> None:
    client = TestClient(create_app(Settings(home=home, max_request_pixels=10_000_000)))
    image = png(2000, 2000)  # 4 megapixels: each one is allowed
    files = [("files", (f"{index}.png", image, "image/png")) for index in range(3)]
    response = client.post("/predict", params={"model_name": MODEL}, files=files)
    assert response.status_code == 413, response.text
    assert response.json()["detail"]["max_request_pixels"] == 10_000_000
    assert decodes == []


def test_too_many_files_is_413_before_decoding(home: Path, decodes: list[int]) -> None:
    client = TestClient(create_app(Settings(home=home, **LIMITS)))
    files = [("files", (f"{i}.png", png(8, 8), "image/png")) for i in range(9)]
    response = client.post("/predict", params={"model_name": MODEL}, files=files)
    assert response.status_code == 413
    assert response.json()["detail"]["max_instances"] == 8
    assert decodes == []


# ------------------------------------------------------------------ what errors reveal


def test_a_422_quotes_only_the_start_of_a_huge_value(home: Path) -> None:
    client = TestClient(create_app(Settings(home=home)))
    response = client.post("/jobs", json={"dataset": "d" * 50_000})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    received = response.json()["detail"]["errors"][0]["received"]
    assert received.startswith("ddd") and "50000 characters" in received


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs", b'{"dataset": "digits", "learning_rate": NaN}'),
        ("/jobs", b'{"dataset": "digits", "seed": Infinity}'),
        (f"/predict?model_name={MODEL}", b'{"instances": [NaN], "pixel_range": NaN}'),
        ("/models/fake/aliases/production", b'{"version": -Infinity}'),
    ],
)
def test_values_json_cannot_spell_are_quoted_not_a_500(home: Path, path: str, body: bytes) -> None:
    client = TestClient(create_app(Settings(home=home)), raise_server_exceptions=False)
    method = "PUT" if "aliases" in path else "POST"
    response = client.request(
        method, path, content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "invalid_input"


def test_an_unreadable_image_error_shows_no_heap_address(home: Path) -> None:
    client = TestClient(create_app(Settings(home=home)))
    response = client.post(
        "/predict",
        params={"model_name": MODEL},
        files={"files": ("x.png", b"\x89PNG not really", "image/png")},
    )
    assert response.status_code == 415
    assert " at 0x" not in response.text and "BytesIO" not in response.text


def test_a_locked_job_store_answers_503_not_500(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_file, "BUSY_TIMEOUT_SECONDS", 0.2)
    client = TestClient(create_app(Settings(home=home)), raise_server_exceptions=False)
    assert client.get("/jobs").status_code == 200  # creates the database
    holder = sqlite3.connect(home / "jobs.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        response = client.post("/jobs", json={"dataset": "digits"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503, response.text
    assert response.json()["detail"]["code"] == "job_store_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert str(home) not in response.text and "locked" not in response.text
    assert client.get("/jobs").json()["total"] == 0
