"""The web dashboard at `/`: served from the package, out of the API schema.

The browser tests, against a real server, a real Redis and a real Celery worker,
are in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from fastapi.testclient import TestClient

from service.local import _start_up_lines
from service.security import new_key, settings_entry
from tests.conftest import ClientFactory
from worker.settings import Settings

PROJECT = Path(__file__).resolve().parents[1]
DASHBOARD = PROJECT / "service" / "dashboard"


def _packaged_names() -> list[str]:
    return sorted(
        path.relative_to(DASHBOARD).as_posix() for path in DASHBOARD.rglob("*") if path.is_file()
    )


def test_the_page_is_served_at_the_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>DaciaVision dashboard</title>" in response.text
    assert 'type="module" src="/dashboard/static/js/main.js"' in response.text
    assert response.headers["x-frame-options"] == "DENY"  # no other site frames its buttons
    # Reports' inline plotly may run in its frames; nothing may reach another server.
    policy = response.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "form-action 'none'" in policy
    assert "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/health/live", "/jobs"])
def test_every_response_carries_the_security_headers(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_every_file_the_page_names_is_served_with_its_type(client: TestClient) -> None:
    page = client.get("/").text
    named = re.findall(r'(?:href|src)="(/dashboard/static/[^"]+)"', page)
    # Modules name each other relatively ("./api.js"); gather those too.
    for script in DASHBOARD.glob("js/*.js"):
        imported = re.findall(r'from "\./(\w+\.js)"', script.read_text())
        named += [f"/dashboard/static/js/{name}" for name in imported]
    assert {"/dashboard/static/dashboard.css", "/dashboard/static/js/main.js"} <= set(named)
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in sorted(set(named)):
        response = client.get(path)
        assert response.status_code == 200, path
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type == expected[Path(path).suffix], path
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path", ["/dashboard/static/nothing.js", "/dashboard/static/../app.py",
             "/dashboard/static/%2e%2e/%2e%2e/app.py", "/dashboard/static/js"],
)  # fmt: skip
def test_only_packaged_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "not_found"


def test_the_dashboard_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not [path for path in paths if path.startswith("/dashboard")]
    assert "/jobs" in paths  # the schema the training form reads its choices from


def test_the_page_loads_without_a_key_where_the_api_needs_one(
    make_client: ClientFactory,
) -> None:
    # The page holds no data: it must load so that the user can type the key in.
    client = make_client(api_keys=settings_entry(new_key(), ["predict"]))
    assert client.get("/").status_code == 200
    assert client.get("/dashboard/static/js/api.js").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/jobs").status_code == 401


def test_api_strings_never_reach_inner_html() -> None:
    # Model, class and job names come from users; they are set as text only.
    for path in DASHBOARD.rglob("*.js"):
        source = path.read_text()
        for sink in (".innerHTML", ".outerHTML", ".insertAdjacentHTML", "document.write"):
            assert sink not in source, f"{path.name} uses {sink}"


def test_the_package_data_covers_every_dashboard_file() -> None:
    # An installed wheel must carry the page: each file matches a package-data glob.
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["service"]
    names = _packaged_names()
    assert "index.html" in names and "js/main.js" in names
    uncovered = [
        name
        for name in names
        if not any(PurePosixPath(f"dashboard/{name}").match(glob) for glob in globs)
    ]
    assert not uncovered, f"add these to [tool.setuptools.package-data]: {uncovered}"


def test_a_built_wheel_carries_every_dashboard_file(tmp_path: Path) -> None:
    # Built from a copy, so nothing is written into the checkout.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for package in ("service", "worker", "trainer"):
        shutil.copytree(PROJECT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "wheels"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("daciavision-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in _packaged_names() if f"service/dashboard/{name}" not in shipped]
    assert not missing, f"the wheel lacks {missing}"


def test_serve_prints_the_dashboard_url(tmp_path: Path) -> None:
    lines = _start_up_lines(Settings(home=tmp_path), "127.0.0.1", 8123, 1)
    assert "  dashboard  http://127.0.0.1:8123/" in lines
    assert lines.index("  dashboard  http://127.0.0.1:8123/") == 2  # right after the API URL
