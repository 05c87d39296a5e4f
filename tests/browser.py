"""Helpers for tests that drive a real headless Chromium against a real uvicorn server."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.workers import free_port, wait_until


@contextmanager
def serve_app(app: FastAPI) -> Iterator[str]:
    """Serve the app with uvicorn in a thread of this process; yield its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def downloads_of(profile: Path) -> Path:
    """The folder where the browser of ``chromium(profile)`` saves downloads."""
    return profile / "downloads"


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with its own profile folder; its console log is readable and
    its downloads land in ``downloads_of(profile)`` without asking."""
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    assert chromium and chromedriver, "./scripts/test installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--window-size=1400,2000", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads_of(profile).mkdir(parents=True, exist_ok=True)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads_of(profile)),
            "download.prompt_for_download": False,
        },
    )
    # An explicit driver path keeps Selenium Manager from trying to download one.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
