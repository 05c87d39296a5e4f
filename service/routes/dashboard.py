"""The web dashboard: one HTML page and its static files, shipped inside the package.

Plain HTML, CSS and ES modules: no build step and no CDN, so the dashboard works
offline and from an installed wheel. Kept out of the OpenAPI schema: it is a page
for people, not part of the API. The page holds no data; every figure it shows
comes from the JSON API, called with the key the user typed in.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter, HTTPException, Response, status

from service.headers import DASHBOARD_POLICY

router = APIRouter(include_in_schema=False)

STATIC_PREFIX = "/dashboard/static"
_DASHBOARD = files("service") / "dashboard"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    # ES modules load only when served with a JavaScript type.
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    # Revalidate on every load, so an upgraded server never runs yesterday's scripts.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
# The page has buttons that move aliases: another site must not frame it and trick
# a click. Its policy lets the srcdoc report frames run plotly's inline script and
# lets nothing reach another server (service/headers.py).
_PAGE_HEADERS = {
    **_HEADERS,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": DASHBOARD_POLICY,
}


def _packaged_files(folder: Traversable, prefix: str = "") -> dict[str, Traversable]:
    # Only the files shipped in the package can be named: a request path is looked up
    # in this listing, never joined onto a directory, so "../" reaches nothing.
    found: dict[str, Traversable] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.update(_packaged_files(entry, f"{name}/"))
        elif any(name.endswith(suffix) for suffix in _CONTENT_TYPES):
            found[name] = entry
    return found


def _file_response(name: str, headers: dict[str, str] = _HEADERS) -> Response:
    entry = _packaged_files(_DASHBOARD).get(name)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the dashboard has no file {name!r}")
    content_type = next(t for suffix, t in _CONTENT_TYPES.items() if name.endswith(suffix))
    return Response(entry.read_bytes(), media_type=content_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
def dashboard_page() -> Response:
    """The dashboard: jobs, studies, models, metrics, reports and predictions."""
    return _file_response("index.html", _PAGE_HEADERS)


@router.get(STATIC_PREFIX + "/{name:path}")
def dashboard_file(name: str) -> Response:
    """A script, style sheet or icon of the dashboard."""
    return _file_response(name)
