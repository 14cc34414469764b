"""Look at a report the way a person does: in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium). Used by the tests and by ``make screenshot``."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from automl.errors import ConfigError

# Chromium's own background traffic is pointless here and refused on closed networks.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@dataclass
class Page:
    text: str
    images: int
    broken_images: list[str]
    console_errors: list[str]
    overflowing: list[str]  # cards and table cells whose content is wider than they are (cut or spilling)
    stretched: list[str]  # tables drawn taller than their rows (stretched beside a figure)


def screenshot(html: str | Path, png: str | Path, width: int = 1200) -> Page:
    """Open ``html`` in headless Chromium, save a full-page screenshot, and say what the page showed."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise ConfigError("Needs Debian's chromium and chromium-driver: `make browser` (as root) installs them.")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory(prefix="automl-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.get(Path(html).resolve().as_uri())
            WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
            images = driver.execute_script(
                "return Array.from(document.images)"
                ".map(i => [i.alt || i.src.slice(0, 40), i.complete && i.naturalWidth > 0])"
            )
            overflowing = driver.execute_script(
                "return Array.from(document.querySelectorAll('.card, td, th'))"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.trim().slice(0, 60))"
            )
            stretched = driver.execute_script(
                "return Array.from(document.querySelectorAll('table')).filter(t => {"
                " const rows = Array.from(t.rows).reduce((s, r) => s + r.getBoundingClientRect().height, 0);"
                " return t.getBoundingClientRect().height > rows + 4; })"
                ".map(t => t.rows[0].textContent.trim().slice(0, 60))"
            )
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(int(height) + 100, 16000))
            driver.save_screenshot(str(png))
            errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
            text = driver.find_element("tag name", "body").text
        finally:
            driver.quit()
    return Page(text, len(images), [name for name, ok in images if not ok], errors, overflowing, stretched)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Screenshot a report.html in headless Chromium.")
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    page = screenshot(args.html, args.png)
    print(f"{args.png}: {page.images} images, {len(page.broken_images)} broken, {len(page.console_errors)} errors")


if __name__ == "__main__":
    main()
