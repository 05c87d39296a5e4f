"""Reports travel gzip-compressed to clients that accept it, whole to those that do not."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.compression import accepts_gzip
from tests.conftest import make_record
from trainer.registry import FileModelRegistry
from worker.settings import Settings


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1, GZIP;q=0.5", True),
        ("*", True),
        ("", False),
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=0", False),
        ("gzip; q=0.0, deflate", False),
        ("*, gzip;q=0", False),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(header: str, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    home = tmp_path_factory.mktemp("home")
    registry = FileModelRegistry(home / "registry")
    # The report reads the card only; the model file is never loaded.
    registry.register("reported", lambda path: path.write_bytes(b"weights"), make_record())
    return TestClient(create_app(Settings(home=home)))


def test_a_version_report_is_sent_compressed_when_the_client_accepts_gzip(
    client: TestClient,
) -> None:
    url = "/models/reported/versions/1/report"
    compressed = client.get(url, headers={"accept-encoding": "gzip, deflate"})
    whole = client.get(url, headers={"accept-encoding": "identity"})
    for response in (compressed, whole):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "Accept-Encoding" in response.headers["vary"]
    assert compressed.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in whole.headers
    # The same page either way; plotly.js inlined makes it megabytes, a third of it sent.
    assert compressed.text == whole.text
    # A self-contained page: it may reach no server at all.
    assert whole.headers["content-security-policy"].startswith("default-src 'none'")
    assert "reported version 1" in whole.text and "Plotly.newPlot" in whole.text
    assert whole.num_bytes_downloaded == len(whole.content) > 1_000_000
    assert compressed.num_bytes_downloaded * 2 < len(compressed.content)


def test_a_client_that_names_no_encoding_gets_the_page_whole(client: TestClient) -> None:
    response = client.get("/models/reported/versions/1/report", headers={"accept-encoding": ""})
    assert response.status_code == 200 and "content-encoding" not in response.headers
