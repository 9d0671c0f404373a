"""Real headless Chromium for the dashboard tests, driven by Selenium through chromedriver.

Chromium or chromedriver missing is a skip on a laptop and a failure under CI=true (.ci/run
installs Debian's `chromium` and `chromium-driver`). The browser only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from conftest import unavailable

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    # Loopback only: no proxy lookups, no component updates, nothing leaves the machine.
    "--no-proxy-server",
    "--disable-component-update",
    "--disable-sync",
)
WAIT = 30.0  # every wait on the page is bounded by this


def binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing = " and ".join(
            name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
        )
        unavailable(f"{missing} not installed (apt-get install chromium chromium-driver)")
    assert chromium is not None and driver is not None
    return chromium, driver


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium (its own profile), quit afterwards."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install 'conveyor-deploy[test]')")
    binary, driver_path = binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    # Keep the console's errors: a failing test shows what the page's JavaScript said.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, cond: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
    """WebDriverWait with a message that says what was waited for, and the browser's console."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond)
    except TimeoutException:
        console = [e.get("message") for e in driver.get_log("browser")]
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; page {driver.current_url}; "
            f"console: {console}"
        ) from None


# The live regions are replaced whole when an event comes: an element found a moment ago may be
# gone. So reads happen in one script (atomic on the page), and clicks retry on a stale element.


def text_of(driver: Any, css: str) -> str:
    """The visible text of the first element matching `css` ("" when there is none)."""
    return str(
        driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
        )
    )


def attribute(driver: Any, css: str, name: str) -> str:
    return str(
        driver.execute_script(
            "const e = document.querySelector(arguments[0]);"
            "return e ? (e.getAttribute(arguments[1]) || '') : '';",
            css,
            name,
        )
    )


def present(driver: Any, css: str) -> bool:
    return bool(driver.execute_script("return document.querySelector(arguments[0]) !== null;", css))


def click(driver: Any, css: str) -> None:
    """Click the element matching `css`, found again if the page replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked(d: Any) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
        except StaleElementReferenceException:
            return False
        return True

    wait(driver, clicked, f"a click on {css}")


def type_into(driver: Any, css: str, text: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def typed(d: Any) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, css).send_keys(text)
        except StaleElementReferenceException:
            return False
        return True

    wait(driver, typed, f"typing into {css}")
