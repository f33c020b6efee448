"""Headless Chromium for the report tests: Debian's chromium and chromedriver driven by selenium.

Absent browser or driver: the tests skip, except under AEVB_REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
The network is never used: a fresh profile, no background services, selenium given both paths (no driver lookup).
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


def _missing(reason: str):
    if os.environ.get("AEVB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AEVB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def start_chromium():
    """A selenium Chrome driver on /usr/bin/chromium (or $AEVB_CHROMIUM) with console logs captured."""
    chromium = os.environ.get("AEVB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = os.environ.get("AEVB_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(chromium).exists():
        _missing(f"no Chromium at {chromium} (apt-get install chromium chromium-driver)")
    if not Path(driver_path).exists():
        _missing(f"no chromedriver at {driver_path} (apt-get install chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not try to fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="aevb-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.aevb_profile = profile
    return driver


def stop_chromium(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.aevb_profile, ignore_errors=True)


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def full_page_screenshot(driver, path: Path) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 100, 16000))
    driver.save_screenshot(str(path))
    return path
