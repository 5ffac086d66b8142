"""A real browser for the HTML report's tests: headless Chromium driven by selenium.

:func:`chromium` starts one (with or without JavaScript) or skips the test, saying why, where
Chromium or its driver is missing or will not start. :func:`load` opens a page and returns what the
browser logged and every request the page made, from the driver's performance log.

The browser is the distribution's (``apt-get install chromium chromium-driver`` on Debian, which
``.ci/run`` does when it runs as root); nothing here downloads one. The paths can be given with
``DETHARNESS_CHROMIUM`` and ``DETHARNESS_CHROMEDRIVER``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)
DRIVER_PLACES = ("/usr/lib/chromium/chromedriver", "/usr/lib/chromium-browser/chromedriver")
ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1280,1024")
#: Chromium's content setting that blocks every script of every page.
NO_JAVASCRIPT = {"profile.managed_default_content_settings.javascript": 2}


def _find(env: str, names: tuple[str, ...], places: tuple[str, ...] = ()) -> str | None:
    given = os.environ.get(env)
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in places if os.access(p, os.X_OK)), None)


def find_chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, or why they cannot be used."""
    browser = _find("DETHARNESS_CHROMIUM", BROWSERS)
    driver = _find("DETHARNESS_CHROMEDRIVER", DRIVERS, DRIVER_PLACES)
    missing = [what for what, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    if missing:
        return (f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver, or set "
                "DETHARNESS_CHROMIUM / DETHARNESS_CHROMEDRIVER)")
    assert browser is not None and driver is not None
    return browser, driver


@contextmanager
def chromium(*, javascript: bool = True) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, logging console messages and network events; the
    test skips where there is none or it does not start."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # pragma: no cover - selenium is in the test extras
        pytest.skip(f"selenium is not installed: {exc}")
    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    browser, driver_path = found
    # With the driver's path given, selenium never runs Selenium Manager (which would fetch one).
    with tempfile.TemporaryDirectory(prefix="dh-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for argument in ARGUMENTS:
            options.add_argument(argument)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        if not javascript:
            options.add_experimental_option("prefs", NO_JAVASCRIPT)
        try:
            driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        except WebDriverException as exc:
            pytest.skip(f"chromium ({browser}, driver {driver_path}) did not start: {exc.msg or exc}")
        try:
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()


@dataclass
class Page:
    """What loading one page gave: the browser's log entries and the URLs it requested."""

    url: str
    log: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Console entries of level SEVERE: script errors, CSP violations, failed loads."""
        return [entry for entry in self.log if entry.get("level") == "SEVERE"]

    @property
    def foreign_requests(self) -> list[str]:
        """Every request other than the page itself and ``data:`` URIs."""
        return [url for url in self.requests if url != self.url and not url.startswith("data:")]


def _requests(driver: Any, url: str) -> list[str]:
    """The URLs of the Network.requestWillBeSent events from the request for ``url`` on.

    A fresh Chromium's first tab is its new-tab page, whose own chrome:// loads can still be in the
    log: requests of a document loaded before ours (another loaderId) are not the page's.
    """
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    sent = [event["params"] for event in events if event.get("method") == "Network.requestWillBeSent"]
    start = next((i for i, params in enumerate(sent) if params["request"]["url"] == url), 0)
    earlier = {params.get("loaderId") for params in sent[:start]}
    return [params["request"]["url"] for params in sent[start:] if params.get("loaderId") not in earlier]


def load(driver: Any, path: Path) -> Page:
    """Open ``path`` (a file) in ``driver`` and collect what the browser logged while it loaded."""
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    url = path.resolve().as_uri()
    driver.get(url)
    # A last round trip, so that events the load queued reach the logs.
    driver.find_element("css selector", "html")
    return Page(url=url, log=driver.get_log("browser"), requests=_requests(driver, url))
