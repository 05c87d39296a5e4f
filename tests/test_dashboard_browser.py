"""The dashboard in a real headless Chromium, as a person uses it.

One deployment for the module: a uvicorn server, a real Redis and a real Celery
worker process (the product's own worker command). The trainings the later tests
need are queued when the module starts, so the worker trains while the first
tests run. A failing test saves a screenshot and the page's console log under
test-artifacts/.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver import ActionChains, Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from service.app import create_app
from service.security import new_key, settings_entry
from tests.browser import chromium, downloads_of, serve_app
from tests.test_worker_integration import Deployment
from tests.workers import (
    REDIS_HOST,
    REDIS_PORT,
    Process,
    ensure_redis,
    redis_database,
    running,
    wait_until,
)
from trainer.architectures import ARCHITECTURES
from trainer.data import load_raw
from trainer.datasets import DATASET_NAMES
from worker.command import celery_worker_command
from worker.settings import Settings

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[1]
ARTIFACTS = PROJECT / "test-artifacts"
# Small and quick, as the other integration tests train: seconds per job on digits.
SMALL_CNN = {"filters1": 8, "filters2": 16, "dense_units": 32}
QUICK_SPEC = {"dataset": "digits", "epochs": 2, "batch_size": 32, "hyperparameters": SMALL_CNN}
MODEL = "dashboard-digits"
TERMINAL = {"succeeded", "failed", "cancelled"}
# The smallest study with a report: one training, then the report stage.
QUICK_STUDY = {
    "name": "dashboard-study",
    "stages": [
        {"name": "train", "trainings": [{"label": "tiny", "spec": {**QUICK_SPEC, "epochs": 1}}]},
        {"name": "report", "kind": "report", "depends_on": ["train"]},
    ],
}


class Site:
    """The shared deployment: its URL, and helpers that wait for its trainings."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, method: str, path: str, **options: Any) -> Any:
        response = httpx.request(method, f"{self.url}{path}", timeout=60, **options)
        assert response.is_success, response.text
        return response.json()

    def versions(self, count: int, timeout: float = 240) -> None:
        """Wait until MODEL has `count` versions, queueing the trainings still missing.

        The form test queues the second version as a person would; run alone, a
        test that needs it queues it here instead.
        """
        jobs = self.api("GET", f"/jobs?model_name={MODEL}&limit=100")["items"]
        for _ in range(count - len([job for job in jobs if job["status"] != "failed"])):
            self.api("POST", "/jobs", json={**QUICK_SPEC, "model_name": MODEL})

        def registered() -> bool:
            jobs = self.api("GET", f"/jobs?model_name={MODEL}&limit=100")["items"]
            failed = [job["error"] for job in jobs if job["status"] in TERMINAL - {"succeeded"}]
            assert not failed, failed
            return len([job for job in jobs if job["status"] == "succeeded"]) >= count

        wait_until(registered, timeout=timeout, interval=0.5, what=f"{count} versions of {MODEL}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    ensure_redis()
    database = redis_database("dashboard")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=database)
    client.flushdb()
    home = tmp_path_factory.mktemp("dashboard") / f"home-{uuid.uuid4().hex[:6]}"
    deployment = Deployment(home, database)
    try:
        with running(deployment.workers), serve_app(create_app(deployment.settings)) as url:
            # Two trainings at a time: the study's runs beside the model's versions.
            command = celery_worker_command(node_name="dashboard@%h", concurrency=2)
            log = home / "dashboard-worker.log"
            worker = Process(command, deployment.environment, log)
            deployment.workers.append(worker)
            # A starting worker advances every running study, which sent a study queued
            # before it a second time (measured: its training ran twice); after, once.
            wait_until(lambda: "ready." in worker.log(), timeout=120, what="the worker")
            site = Site(url)
            # Queued now, so the worker trains while the first tests run.
            site.api("POST", "/jobs", json={**QUICK_SPEC, "model_name": MODEL})
            site.api("POST", "/studies", json=QUICK_STUDY)
            yield site
    finally:
        client.flushdb()


@pytest.fixture
def browser(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Chrome]:
    failed_before = request.session.testsfailed
    with chromium(tmp_path / "chrome") as driver:
        yield driver
        # The test's own report is counted before its fixtures are torn down.
        if request.session.testsfailed > failed_before:
            ARTIFACTS.mkdir(exist_ok=True)
            name = request.node.name
            driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
            log = json.dumps(_console(driver), indent=1)
            (ARTIFACTS / f"{name}.console.json").write_text(log)


def _wait(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    # The page redraws what changed while it polls: an element found a moment ago
    # may be gone, so the condition is simply asked again.
    wait = WebDriverWait(
        browser, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(condition)


def _shown_text(element_id: str) -> Callable[[WebDriver], str | None]:
    def shown(driver: WebDriver) -> str | None:
        node = driver.find_element(By.ID, element_id)
        return node.text if node.is_displayed() and node.text else None

    return shown


def _console(browser: Chrome) -> list[dict[str, Any]]:
    """The page's console and network messages since the last call."""
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def _errors(browser: Chrome) -> list[dict[str, Any]]:
    return [entry for entry in _console(browser) if entry["level"] == "SEVERE"]


def _click(browser: WebDriver, selector: str, timeout: float = 30) -> None:
    # Once: clicking again after a click that raised could cancel or roll back twice.
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, selector), timeout)[0].click()


def _open(browser: WebDriver, site: Site) -> None:
    browser.get(f"{site.url}/")
    # Ready once the training form has its choices from the OpenAPI document.
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#train-form option"))


def test_the_dashboard_loads_with_choices_from_the_api_and_no_console_errors(
    site: Site, browser: Chrome
) -> None:
    _open(browser, site)
    form = browser.find_element(By.ID, "train-form")
    options = {
        name: [o.text for o in form.find_elements(By.CSS_SELECTOR, f"[name={name}] option")]
        for name in ("architecture", "dataset")
    }
    assert options == {"architecture": list(ARCHITECTURES), "dataset": list(DATASET_NAMES)}
    # The queued job shows up in the table with a progress bar, the study with its stages.
    queued = site.api("GET", f"/jobs?model_name={MODEL}")["items"][0]["job_id"]
    row = f'#jobs-table tr[data-job-id="{queued}"] [role=progressbar]'
    assert _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, row))
    study = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "[data-study-id]"))[0]
    assert "dashboard-study" in study.text
    stages = study.find_elements(By.CSS_SELECTOR, "tr[data-stage]")
    assert [stage.get_attribute("data-stage") for stage in stages] == ["train", "report"]
    assert not _errors(browser)


_JOB_ROW = """
const row = document.querySelector(`#jobs-table tr[data-job-id="${arguments[0]}"]`);
return row && {text: row.innerText,
               status: row.querySelector(".status").textContent,
               progress: row.querySelector("[role=progressbar]").getAttribute("aria-valuenow")};
"""


def test_a_queued_job_is_cancelled_from_its_row(site: Site, browser: Chrome) -> None:
    # Queued behind the module's trainings, so it is still waiting when cancelled.
    job = site.api("POST", "/jobs", json={**QUICK_SPEC, "model_name": "dashboard-cancelled"})
    _open(browser, site)
    _click(browser, f'#jobs-table tr[data-job-id="{job["job_id"]}"] button')

    def cancelled(driver: WebDriver) -> bool:
        row = driver.execute_script(_JOB_ROW, job["job_id"])
        # The status cell, not the row: the model's name has "cancelled" in it too.
        return row is not None and row["status"] == "cancelled"

    _wait(browser, cancelled, timeout=60)
    assert site.api("GET", f"/jobs/{job['job_id']}")["status"] == "cancelled"
    assert not browser.find_elements(
        By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{job["job_id"]}"] button'
    )
    assert not _errors(browser)


def test_a_job_queued_from_the_form_trains_to_a_full_progress_bar(
    site: Site, browser: Chrome
) -> None:
    _open(browser, site)
    form = browser.find_element(By.ID, "train-form")
    Select(form.find_element(By.NAME, "architecture")).select_by_value("custom_cnn")
    Select(form.find_element(By.NAME, "dataset")).select_by_value("digits")
    form.find_element(By.NAME, "epochs").send_keys(str(QUICK_SPEC["epochs"]))
    form.find_element(By.NAME, "batch_size").send_keys(str(QUICK_SPEC["batch_size"]))
    # The second version of the model the other tests use.
    form.find_element(By.NAME, "model_name").send_keys(MODEL)
    form.find_element(By.NAME, "hyperparameters").send_keys(json.dumps(SMALL_CNN))
    before = site.api("GET", f"/jobs?model_name={MODEL}")["total"]
    # An impatient double click queues one job.
    ActionChains(browser).double_click(
        form.find_element(By.CSS_SELECTOR, "button[type=submit]")
    ).perform()

    queued = _wait(browser, _shown_text("train-message"))
    assert queued.startswith("Queued job "), queued
    job_id = queued.removeprefix("Queued job ").split(" ")[0]
    assert site.api("GET", f"/jobs?model_name={MODEL}")["total"] == before + 1
    # The keyboard's focus stayed on the button: a disabled one would drop it to the page.
    assert browser.execute_script("return document.activeElement.type") == "submit"
    spec = site.api("GET", f"/jobs/{job_id}")["spec"]
    assert (spec["dataset"], spec["epochs"], spec["batch_size"]) == ("digits", 2, 32)
    assert spec["hyperparameters"] | SMALL_CNN == spec["hyperparameters"]
    assert spec["sample_fraction"] == 1.0  # left empty: the recipe's own value

    progress_seen = set()

    def finished(driver: WebDriver) -> dict[str, str] | None:
        row: dict[str, str] | None = driver.execute_script(_JOB_ROW, job_id)
        if row is not None:
            progress_seen.add(row["progress"])
        return row if row is not None and row["status"] == "succeeded" else None

    row = _wait(browser, finished, timeout=240)
    assert row["progress"] == "100"
    assert "epoch 2/2" in row["text"] and f"{MODEL} v2" in row["text"]
    assert "0" in progress_seen  # it started empty while queued
    assert not _errors(browser)


def _digit_png(path: Path, index: int) -> Path:
    raw = load_raw("digits", None)
    buffer = io.BytesIO()
    Image.fromarray(raw.x_test[index]).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_an_uploaded_image_shows_the_label_and_top_k_bars(
    site: Site, browser: Chrome, tmp_path: Path
) -> None:
    site.versions(1)
    image = _digit_png(tmp_path / "digit.png", 3)
    upload = [("files", ("digit.png", image.read_bytes(), "image/png"))]
    answer = site.api("POST", f"/predict?model_name={MODEL}&version=1&top_k=4", files=upload)
    expected = answer["predictions"][0]

    _open(browser, site)
    form = browser.find_element(By.ID, "predict-form")
    _wait(browser, lambda _: form.find_elements(By.CSS_SELECTOR, f'option[value="{MODEL}"]'))
    Select(form.find_element(By.NAME, "model_name")).select_by_value(MODEL)
    form.find_element(By.NAME, "version").send_keys("1")
    top_k = form.find_element(By.NAME, "top_k")
    top_k.clear()
    top_k.send_keys("4")
    form.find_element(By.NAME, "file").send_keys(str(image))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    label = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".predicted-label"))[0]
    assert label.text == expected["label"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#predict-result .probability")
    assert [bar.get_attribute("data-label") for bar in bars] == [
        entry["label"] for entry in expected["top_k"]
    ]
    best = bars[0].find_element(By.CSS_SELECTOR, ".probability-value").text
    assert best == f"{expected['top_k'][0]['probability'] * 100:.1f}%"
    assert f"{MODEL} v1 says" in browser.find_element(By.ID, "predict-result").text
    assert not _errors(browser)


def _open_version(browser: WebDriver, site: Site, version: int, action: str) -> None:
    site.versions(version)
    _open(browser, site)
    _click(browser, f'[data-model="{MODEL}"] tr[data-version="{version}"] [data-action="{action}"]')


def test_the_metrics_view_shows_the_confusion_matrix_with_class_names(
    site: Site, browser: Chrome
) -> None:
    _open_version(browser, site, 1, "metrics")
    selector = "#details table.confusion"
    table = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, selector))[0]
    # The keyboard's focus followed the content to the panel it opened.
    focused = browser.execute_script("return document.activeElement.id")
    assert focused == "details-title"
    report = site.api("GET", f"/metrics?model_name={MODEL}&version=1")
    labels = report["confusion_matrix"]["labels"]
    header = [cell.text for cell in table.find_elements(By.CSS_SELECTOR, "thead th")][1:]
    assert header == labels
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [row.find_element(By.TAG_NAME, "th").text for row in rows] == labels
    counts = [[int(cell.text) for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert counts == report["confusion_matrix"]["matrix"]
    # A heat map: each cell shaded by its share of the true class.
    first = rows[0].find_elements(By.TAG_NAME, "td")[0]
    share = browser.execute_script("return arguments[0].style.getPropertyValue('--share')", first)
    assert float(share) == pytest.approx(counts[0][0] / sum(counts[0]), abs=1e-3)
    background = first.value_of_css_property("background-color")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent") or counts[0][0] == 0
    per_class = browser.find_elements(By.CSS_SELECTOR, "#details table.per-class tbody th")
    assert [cell.text for cell in per_class][: len(labels)] == labels
    assert not _errors(browser)


def _loaded_width(image: WebElement) -> Callable[[WebDriver], int]:
    def width(driver: WebDriver) -> int:
        script = "return arguments[0].complete ? arguments[0].naturalWidth : 0"
        return int(driver.execute_script(script, image))

    return width


def test_a_version_report_renders_its_plots(site: Site, browser: Chrome) -> None:
    _open_version(browser, site, 1, "report")
    figures = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#details figure"))
    assert [f.get_attribute("data-plot") for f in figures] == ["curves", "confusion", "f1"]
    for figure in figures:
        width = _wait(browser, _loaded_width(figure.find_element(By.TAG_NAME, "img")))
        assert width > 100, figure.get_attribute("data-plot")
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "#details iframe.report-frame"))
    # plotly.js ran inside the sandboxed frame and drew every figure.
    plots = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), 60)
    assert len(plots) == 3
    assert browser.find_element(By.TAG_NAME, "h1").text == f"{MODEL} version 1"
    browser.switch_to.default_content()
    assert not _errors(browser)
    # Opened on its own, under its own policy (no server reachable), it draws them too.
    browser.get(f"{site.url}/models/{MODEL}/versions/1/report")
    plots = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), 60)
    assert len(plots) == 3 and not _errors(browser)


def test_a_study_report_opens_once_the_study_has_run(site: Site, browser: Chrome) -> None:
    _open(browser, site)
    _click(browser, "[data-study-id] [data-study-report]", timeout=240)
    study = browser.find_element(By.CSS_SELECTOR, "[data-study-id]")
    assert "succeeded" in study.text and "100%" in study.text
    frame = _wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#details iframe"))
    browser.switch_to.frame(frame)
    body = _wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").text, timeout=60)
    assert "dashboard-study" in body
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    browser.switch_to.default_content()
    # The study's own model is folded away from the models people train themselves.
    studies = '#study-models-list [data-model^="study-"]'
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, studies))
    assert not browser.find_elements(By.CSS_SELECTOR, '#models-list [data-model^="study-"]')
    count = browser.find_element(By.ID, "study-models-count").get_attribute("textContent")
    assert count == str(len(browser.find_elements(By.CSS_SELECTOR, studies)))
    assert not _errors(browser)


def test_on_a_phone_the_page_is_no_wider_than_the_screen(site: Site, browser: Chrome) -> None:
    site.versions(1)
    browser.set_window_size(375, 800)
    try:
        _open(browser, site)
        _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f'[data-model="{MODEL}"]'))
        _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr"))
        viewport, page = browser.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]"
        )
        # The tables scroll inside their cards; the page itself does not scroll sideways.
        assert page <= viewport, (page, viewport)
    finally:
        browser.set_window_size(1400, 2000)  # as tests/browser.py starts it


def _alias_target(browser: WebDriver, alias: str) -> str | None:
    selector = f'[data-model="{MODEL}"] [data-alias="{alias}"] .alias-target'
    nodes = browser.find_elements(By.CSS_SELECTOR, selector)
    return nodes[0].text.strip() if nodes else None


def _promote(browser: WebDriver, version: int) -> None:
    card = browser.find_element(By.CSS_SELECTOR, f'[data-model="{MODEL}"]')
    alias = card.find_element(By.NAME, "alias")
    alias.clear()
    alias.send_keys("production")
    Select(card.find_element(By.NAME, "version")).select_by_value(str(version))
    card.find_element(By.CSS_SELECTOR, '[data-action="promote"]').click()


def test_promote_and_roll_back_an_alias(site: Site, browser: Chrome) -> None:
    site.versions(2)
    _open(browser, site)
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f'[data-model="{MODEL}"] form'))
    _promote(browser, 1)
    _wait(browser, lambda b: _alias_target(b, "production") == "→ v1")
    _promote(browser, 2)
    _wait(browser, lambda b: _alias_target(b, "production") == "→ v2")
    message = browser.find_element(By.ID, "models-message").text
    assert message == f"{MODEL}: production now points at v2 (was v1)."
    assert site.api("GET", f"/models/{MODEL}")["aliases"] == {"production": 2}

    _click(browser, '[data-alias="production"] [data-action="rollback"]')
    _wait(browser, lambda b: _alias_target(b, "production") == "→ v1")
    assert site.api("GET", f"/models/{MODEL}")["aliases"] == {"production": 1}
    badges = f'[data-model="{MODEL}"] tr[data-version="1"] .badge'
    assert [badge.text for badge in browser.find_elements(By.CSS_SELECTOR, badges)] == [
        "production"
    ]
    assert not _errors(browser)


def test_a_version_model_file_downloads_from_its_row(
    site: Site, browser: Chrome, tmp_path: Path
) -> None:
    site.versions(1)
    _open(browser, site)
    _click(browser, f'[data-model="{MODEL}"] tr[data-version="1"] [data-action="download"]')
    saved = downloads_of(tmp_path / "chrome") / f"{MODEL}-v1.keras"
    served = httpx.get(f"{site.url}/models/{MODEL}/versions/1/model.keras", timeout=60)
    # Chromium writes a .crdownload file and renames it once the download is whole.
    wait_until(
        lambda: saved.is_file() and saved.stat().st_size == len(served.content),
        timeout=30,
        what="the download",
    )
    assert saved.read_bytes() == served.content
    message = _wait(browser, _shown_text("models-message"))
    assert message == f"Downloaded {MODEL}-v1.keras."
    assert not _errors(browser)


def test_without_the_right_key_the_dashboard_says_what_is_missing(tmp_path: Path) -> None:
    key = new_key()
    settings = Settings(home=tmp_path / "home", api_keys=settings_entry(key, ["predict"]))
    with serve_app(create_app(settings)) as url, chromium(tmp_path / "chrome") as browser:
        browser.get(f"{url}/")
        needed = _wait(browser, _shown_text("jobs-message"))
        assert needed == "A key is needed: enter an API key at the top of the page."
        assert "A key is needed" in _wait(browser, _shown_text("models-message"))

        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        lacks = "This key lacks the train scope: use a key with train or admin."
        _wait(browser, lambda b: b.find_element(By.ID, "jobs-message").text == lacks)
        # The predict scope reads models: that section's message is gone.
        _wait(browser, lambda b: not b.find_element(By.ID, "models-message").is_displayed())
        assert "No models registered yet" in browser.find_element(By.ID, "models-list").text
        assert browser.execute_script("return sessionStorage.length") == 1
        assert browser.execute_script("return localStorage.length") == 0

        browser.find_element(By.ID, "api-key").send_keys("not-a-key")
        browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        _wait(browser, lambda b: "was not accepted" in b.find_element(By.ID, "jobs-message").text)
