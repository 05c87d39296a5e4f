"""Who may call what: API keys with scopes, and the checks that keep other sites out.

Keys are configured as SHA-256 hashes with their scopes (``DACIAVISION_API_KEYS``), so
the settings never hold a usable secret. A request presents its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; ``service/app.py`` lists which
scope each router's reads and writes need (``ACCESS``), checked as a dependency of its
routes or, on the prediction routers, by their route class (``access_checked_route``).

A web page the operator merely visits must not be able to act either. A cross-site
form post carries no custom header and a form content type; other cross-site scripts
carry an Origin. So a state-changing POST without an API key header is refused when
it has a form body or a foreign origin (this service's own pages, and the configured
origins, excepted).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, get_args

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from service.errors import (
    ForbiddenError,
    UnauthenticatedError,
    UnsupportedMediaTypeError,
    domain_error,
    error_json,
    http_error,
    quoted,
    validation_error,
)
from trainer.errors import DaciaVisionError

Scope = Literal["predict", "train", "admin"]
SCOPES: Final[tuple[str, ...]] = get_args(Scope)
KEY_PREFIX = "dv_"
ENTRY_SEPARATOR = ";"
# Methods an HTML form can send cross-site without a CORS preflight.
FORM_METHODS = frozenset({"POST"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"
# The bodies an HTML form can send to any site without asking (no CORS preflight).
FORM_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: the SHA-256 digest of the key and the scopes it grants."""

    digest: bytes
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is configured."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key: 256 bits, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def settings_entry(key: str, scopes: Iterable[str]) -> str:
    """The ``DACIAVISION_API_KEYS`` entry for ``key``: its hash and its scopes."""
    return f"{hash_key(key)}:{','.join(check_scopes(scopes))}"


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, validated and de-duplicated in their canonical order."""
    wanted = {scope.strip() for scope in scopes if scope.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if not wanted:
        raise ValueError(f"no scope given; use one or more of: {', '.join(SCOPES)}")
    if unknown:
        raise ValueError(f"scopes {unknown} are not valid; use one or more of: {', '.join(SCOPES)}")
    return [scope for scope in SCOPES if scope in wanted]


def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """Parse ``DACIAVISION_API_KEYS``: ``sha256hex:scope,scope`` entries joined by ';'."""
    keys = []
    for number, entry in enumerate(text.split(ENTRY_SEPARATOR), start=1):
        if not entry.strip():
            continue
        digest, separator, scopes = entry.strip().partition(":")
        if not separator or len(digest) != 64:
            raise ValueError(
                f"DACIAVISION_API_KEYS entry {number} is not '<64 hex digits>:<scopes>'; "
                "create one with `daciavision keys new --scopes predict`"
            )
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            raise ValueError(
                f"DACIAVISION_API_KEYS entry {number}: the hash is not hexadecimal"
            ) from None
        keys.append(ApiKey(raw, frozenset(check_scopes(scopes.split(",")))))
    return tuple(keys)


class Keyring:
    """The configured keys; empty means the API runs open (loopback only)."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)

    @property
    def open(self) -> bool:
        return not self.keys

    def scopes_of(self, presented: str) -> frozenset[str] | None:
        """The scopes of a presented key, or None if it is not one of ours."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: frozenset[str] | None = None
        # Compare with every key, in constant time each, and never stop early:
        # the time taken says nothing about which key, or how much of it, matched.
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key.scopes
        return found


_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="An API key as `Authorization: Bearer <key>`.",
)
_API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="An API key as `X-API-Key: <key>`.",
)


def presented_key(headers: Headers) -> str | None:
    """The key the request carries, from either header, as _BEARER and _API_KEY_HEADER read it."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


def document_key_security(app: FastAPI, protected: Iterable[BaseRoute]) -> None:
    """Declare the two key schemes in the OpenAPI document for the routes that check keys.

    As _BEARER and _API_KEY_HEADER would as dependencies of RouteAccess (the schemes, and
    each operation's "either scheme"), which is what Swagger UI's "Authorize" reads.
    RouteAccess reads the headers itself instead: FastAPI solves every dependency anew
    per request, and a single-image /predict spent about a third of its event-loop time
    solving them.
    """
    operations = {
        (route.path_format, method.lower())
        for route in protected
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    }
    schemes = {
        scheme.scheme_name: scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        for scheme in (_BEARER, _API_KEY_HEADER)
    }
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        documented = app.openapi_schema is not None
        schema = generate()
        if documented:
            return schema
        for path, path_item in schema.get("paths", {}).items():
            for method, operation in path_item.items():
                if (path, method) in operations:
                    operation["security"] = [{name: []} for name in schemes]
        schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(schemes)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _same_origin_browser(request: Request, allowed_origins: frozenset[str]) -> bool:
    # Browsers mark where a request comes from; a page of this very service (the
    # docs' "Try it out") or an allowed origin may post like any client.
    if request.headers.get("sec-fetch-site") == "same-origin":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin == own or origin in allowed_origins


@dataclass(frozen=True)
class RouteAccess:
    """The scopes a router's routes need: one for reads, one for changes.

    ``form_posts`` allows bodies any client may send (multipart uploads to
    /predict): such routes change nothing, so a cross-site post gains nothing.
    """

    read: Scope
    write: Scope
    form_posts: bool = False

    def scope_for(self, method: str) -> Scope:
        return self.read if method.upper() in READ_METHODS else self.write

    async def __call__(self, request: Request) -> None:
        # async: cheap checks, so no thread from the shared pool is taken for them. The
        # headers are read here, not through security dependencies (see
        # document_key_security, which documents them).
        key = presented_key(request.headers)
        keyring: Keyring = request.app.state.services.keyring
        scope = self.scope_for(request.method)
        if not keyring.open:
            self.check_key(keyring, key, scope)
        if request.method in FORM_METHODS and not self.form_posts and key is None:
            self._check_not_a_form_post(request)

    @staticmethod
    def check_key(keyring: Keyring, key: str | None, scope: Scope) -> None:
        if key is None:
            raise UnauthenticatedError(
                "this route needs an API key; send it as 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>' (the operator creates keys with `daciavision keys new`)"
            )
        scopes = keyring.scopes_of(key)
        if scopes is None:
            raise UnauthenticatedError("the API key is not valid; check it or ask for a new one")
        if scope not in scopes and "admin" not in scopes:
            raise ForbiddenError(
                f"this route needs the {scope!r} scope; the key has "
                f"{', '.join(sorted(scopes))}. Use a key with "
                + (f"{scope!r} or 'admin'" if scope != "admin" else "'admin'"),
                required_scope=scope,
            )

    @staticmethod
    def _check_not_a_form_post(request: Request) -> None:
        allowed: frozenset[str] = request.app.state.services.allowed_origins
        if _same_origin_browser(request, allowed):
            return
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in FORM_CONTENT_TYPES:
            raise UnsupportedMediaTypeError(
                f"this POST changes state, so it is not accepted as {content_type} (what any "
                f"web page's form can send); send {JSON_TYPE} (the body may be empty) or an "
                "API key header",
                accepted_content_types=[JSON_TYPE],
            )
        # A script without a form (fetch in no-cors mode, a beacon) still says where
        # it runs; scripts and tools outside a browser send no Origin at all.
        if "origin" in request.headers or request.headers.get("sec-fetch-site") in (
            "cross-site",
            "same-site",
        ):
            raise ForbiddenError(
                f"origin {quoted(request.headers.get('origin'), 100)!r} may not change state "
                "here; the operator lists allowed origins in DACIAVISION_ALLOWED_ORIGINS"
            )


class _AccessCheckedRoute(APIRoute):
    access: ClassVar[RouteAccess]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        access = self.access

        async def checked(request: Request) -> Response:
            await access(request)
            return await handler(request)

        return checked


def access_checked_route(access: RouteAccess, base: type[APIRoute] = APIRoute) -> type[APIRoute]:
    """A route class whose routes run ``access`` themselves, before FastAPI's handler.

    For the prediction routers, included without ``Depends(access)``: as a dependency,
    the same check cost about 70 µs per single-image /predict in FastAPI's machinery on
    a 2-core EPYC, more than decoding the image. Every route of such a router is
    checked, so a route added to it later cannot be left open. ``base``'s handler wraps
    the check, so its answers to a refused key are shaped as its other errors.
    """
    bases = (_AccessCheckedRoute,) if base is APIRoute else (base, _AccessCheckedRoute)
    return type("AccessCheckedRoute", bases, {"access": access})


def checks_access_itself(router: APIRouter, access: RouteAccess) -> bool:
    """Whether ``router``'s routes run ``access`` themselves (``access_checked_route``)."""
    route_class = router.route_class
    return issubclass(route_class, _AccessCheckedRoute) and route_class.access == access


LOOPBACK_HOSTS: Final[tuple[str, ...]] = ("localhost", "127.0.0.1", "[::1]", "::1")
# Probes come from orchestrators that address the container by IP; they reveal nothing.
_OPEN_PATH_PREFIX = "/health/"


def access_denial(
    request: Request, access_by_route: Mapping[int, RouteAccess]
) -> DaciaVisionError | None:
    """The 401 or 403 the matched route's RouteAccess would raise, or None.

    ``access_by_route`` maps ``id(route)`` to the access its router was included with.
    """
    keyring: Keyring = request.app.state.services.keyring
    access = access_by_route.get(id(request.scope.get("route")))
    if keyring.open or access is None:
        return None
    try:
        access.check_key(keyring, presented_key(request.headers), access.scope_for(request.method))
    except (UnauthenticatedError, ForbiddenError) as error:
        return error
    return None


def check_access_before_body_validation(
    app: FastAPI, access_by_route: Mapping[int, RouteAccess]
) -> None:
    """Answer 401/403 before 422 to a caller without the right key.

    FastAPI parses a JSON body before it runs any dependency, so a malformed body
    reached a caller without a key as a detailed 422; that caller now gets the
    401 or 403 the route's access check gives.
    """

    async def validation(request: Request, error: Exception) -> Response:
        denial = access_denial(request, access_by_route)
        if denial is not None:
            return await domain_error(request, denial)
        return await validation_error(request, error)

    async def unreadable_body(request: Request, error: Exception) -> Response:
        # A body that is not UTF-8 fails as early: as a 400 from FastAPI.
        denial = access_denial(request, access_by_route)
        if denial is not None and getattr(error, "status_code", None) == 400:
            return await domain_error(request, denial)
        return await http_error(request, error)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, unreadable_body)


@dataclass(frozen=True)
class HostPolicy:
    """Which Host names the API answers."""

    names: frozenset[str]
    # Names without a dot ("localhost", a machine's own short name) cannot be
    # registered in public DNS, so no attacker's page can be served under one.
    dotless: bool = False

    def allows(self, name: str) -> bool:
        return name in self.names or (self.dotless and "." not in name and ":" not in name)


def host_policy(configured: str | None, keyring: Keyring) -> HostPolicy | None:
    """The Host names to answer, or None for any.

    Without keys, only loopback addresses and dotless names: a DNS-rebinding page
    (evil.example resolving to 127.0.0.1) then reaches nothing. With keys, such a
    page has no key to send, so any name is answered unless the operator lists them.
    """
    names = frozenset(
        name.strip().lower() for name in (configured or "").split(",") if name.strip()
    )
    if not names:
        # Unset or empty alike: `DACIAVISION_ALLOWED_HOSTS=` in an env file must not
        # turn every request away with 400 invalid_host.
        return HostPolicy(frozenset(LOOPBACK_HOSTS), dotless=True) if keyring.open else None
    return None if "*" in names else HostPolicy(names)


# RFC 9110's Host: a DNS name, an IPv4 address or a bracketed IPv6 one, then an optional
# numeric port. Anything else ("api.example.org:443@evil.example") names no host.
_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")


def _host_name(host: str) -> str | None:
    """The Host header's name without its port; None when it is not a host name."""
    match = _HOST.fullmatch(host.strip().lower())
    return match["name"] if match else None


class TrustedHostMiddleware:
    """Answers 400 to a Host header not in the allowed list (one error shape)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_OPEN_PATH_PREFIX):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        name = _host_name(host)
        if name is not None and self.policy.allows(name):
            await self.app(scope, receive, send)
            return
        response = error_json(
            400,
            "invalid_host",
            f"this server does not answer to the host name {quoted(host, 100)!r}; the operator "
            "lists accepted names in DACIAVISION_ALLOWED_HOSTS",
        )
        await response(scope, receive, send)
