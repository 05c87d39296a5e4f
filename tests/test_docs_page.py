"""The OpenAPI docs pages in a real headless Chromium: they render offline and work.

A newcomer's first stop is /docs: this submits a training job from Swagger
UI's own "Try it out" form, as a person would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from service.app import create_app
from service.security import new_key, settings_entry
from tests.browser import chromium, serve_app
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    with serve_app(create_app(Settings(home=tmp_path))) as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path / "chrome") as driver:
        yield driver


def test_swagger_ui_submits_a_training_job(
    server_url: str, browser: WebDriver, tmp_path: Path
) -> None:
    screenshots = tmp_path
    browser.get(f"{server_url}/docs")
    wait = WebDriverWait(browser, 30)
    operation = wait.until(
        expected_conditions.presence_of_element_located(
            (By.ID, "operations-jobs-create_job_jobs_post")
        )
    )
    assert "Queue a training job" in operation.text
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, ".try-out__btn"))
    ).click()
    examples = Select(operation.find_element(By.CSS_SELECTOR, ".examples-select select"))
    examples.select_by_visible_text("A one-minute smoke test on scikit-learn's bundled digits")
    operation.find_element(By.CSS_SELECTOR, ".execute").click()
    status_cell = (By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status")
    wait.until(expected_conditions.presence_of_element_located(status_cell))
    assert browser.find_element(*status_cell).text.strip() == "202"
    browser.save_screenshot(str(screenshots / "docs-submitted-job.png"))

    jobs = httpx.get(f"{server_url}/jobs").json()
    assert jobs["total"] == 1
    assert jobs["items"][0]["spec"]["dataset"] == "digits"
    assert jobs["items"][0]["model_name"] == "digits-smoke"


def test_redoc_renders_every_tag_offline(server_url: str, browser: WebDriver) -> None:
    browser.get(f"{server_url}/redoc")
    WebDriverWait(browser, 30).until(
        expected_conditions.text_to_be_present_in_element(
            (By.TAG_NAME, "body"), "Per-class report of a model version"
        )
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    for heading in ("jobs", "models", "predict", "metrics", "tensorflow-serving"):
        assert heading in body
    # Nothing came from a CDN: the machine has no internet, yet the page rendered.
    assert "static-offline-docs" in browser.page_source


def test_authorize_in_swagger_ui_sends_the_api_key(tmp_path: Path, browser: WebDriver) -> None:
    key = new_key()
    settings = Settings(home=tmp_path, api_keys=settings_entry(key, ["train"]))
    with serve_app(create_app(settings)) as url:
        browser.get(f"{url}/docs")
        wait = WebDriverWait(browser, 30)
        wait.until(
            expected_conditions.element_to_be_clickable(
                (By.CSS_SELECTOR, ".auth-wrapper .authorize")
            )
        ).click()
        containers = wait.until(
            expected_conditions.presence_of_all_elements_located(
                (By.CSS_SELECTOR, ".auth-container")
            )
        )
        (api_key,) = [c for c in containers if "ApiKeyHeader" in c.text]
        api_key.find_element(By.CSS_SELECTOR, "input").send_keys(key)
        api_key.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .authorize").click()
        browser.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .btn-done").click()

        operation = browser.find_element(By.ID, "operations-jobs-create_job_jobs_post")
        operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, ".try-out__btn"))
        ).click()
        examples = Select(operation.find_element(By.CSS_SELECTOR, ".examples-select select"))
        examples.select_by_visible_text("A one-minute smoke test on scikit-learn's bundled digits")
        operation.find_element(By.CSS_SELECTOR, ".execute").click()
        status_cell = (By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status")
        wait.until(expected_conditions.presence_of_element_located(status_cell))
        assert browser.find_element(*status_cell).text.strip() == "202"

        assert httpx.get(f"{url}/jobs").status_code == 401
        jobs = httpx.get(f"{url}/jobs", headers={"X-API-Key": key}).json()
        assert jobs["total"] == 1
