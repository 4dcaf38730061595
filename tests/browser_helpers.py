"""Headless Debian chromium through selenium, for the pages mmtune writes or serves (the chat page, the report).

The browser's console is recorded (``goog:loggingPrefs``), so a test can say a page opened without a script
error or a resource that failed to load; ``distinct_colours`` tells a drawn screenshot from a blank one.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="chromium and chromedriver are not installed (scripts/setup.sh --dev installs them as root: "
           "apt-get install -y chromium chromium-driver)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,800"]


@contextmanager
def chromium(profile_dir: Path):
    """A headless chromium driver whose browser log holds every console message; quit when the block ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """The console messages at level SEVERE since the last call (script errors, resources that failed to load)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def distinct_colours(png: Path) -> int:
    """How many different colours a screenshot holds: a blank page has one or two, a drawn one hundreds."""
    from PIL import Image

    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))
