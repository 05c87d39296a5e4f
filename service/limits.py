"""Bounded requests: body sizes counted while they stream, a time limit per request.

Both are pure ASGI middleware, so they see the body as it arrives, before Starlette
spools a multipart part to disk or FastAPI reads a JSON body into memory.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_json

# Routes whose body carries images; every other route takes a small JSON document.
_IMAGE_ROUTES = re.compile(r"^/predict$|^/v1/models/[^/]+(/versions/[^/]+|/labels/[^/]+)?:predict$")

LimitFor = Callable[[str], int]


def body_limit_for(max_request_bytes: int, max_json_body_bytes: int) -> LimitFor:
    """The byte limit of a path: image routes get the request limit, all others the JSON one.

    Deciding by exclusion means a route added later (``/studies``) is bounded too.
    """

    def limit_for(path: str) -> int:
        return max_request_bytes if _IMAGE_ROUTES.match(path) else max_json_body_bytes

    return limit_for


class BodyLimitMiddleware:
    """Refuses a body past its limit with 413, having read at most the limit.

    A declared Content-Length over the limit is refused before a byte is read. A
    chunked or lying body is cut off as soon as the running count passes the limit:
    the app is told the client left (so it stops reading and answers nothing) and
    this middleware sends the 413 in the one error shape.
    """

    def __init__(self, app: ASGIApp, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(limit, scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a "disconnect"; ours follows
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _refuse(limit, scope, receive, send)


async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_json(
        413,
        "payload_too_large",
        f"the request body is larger than {limit} bytes, the most this route accepts; "
        "send fewer or smaller images (or a smaller document)",
        {"max_bytes": limit},
    )
    # Tell the client and the server that the rest of the body will not be read.
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestTimeoutMiddleware:
    """Answers 504 when a request runs longer than its limit.

    A slow-loris body or a stuck dependency then costs a bounded time. Work already
    handed to a thread cannot be interrupted and finishes in the background.
    """

    def __init__(self, app: ASGIApp, timeout_seconds: float) -> None:
        self.app = app
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started:
                raise  # too late for a clean answer; the server closes the connection
            response = error_json(
                504,
                "request_timeout",
                f"the request took longer than {self.timeout_seconds:g} seconds and was "
                "stopped; send a smaller request or retry later",
            )
            await response(scope, receive, send)


class OffLoopJsonRequest(Request):
    """A request whose JSON body is parsed in a worker thread, not on the event loop."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = await run_in_threadpool(json.loads, await self.body())
        return self._json


class OffLoopJsonRoute(APIRoute):
    """Route class for JSON routes: FastAPI's body parsing then runs off the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(OffLoopJsonRequest(request.scope, request.receive))

        return handle
