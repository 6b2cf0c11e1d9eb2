"""Drives tether's status page in headless Chromium for tests/integration/status_page.rs.

Usage: status_page.py URL SCREENSHOT CHROMIUM CHROMEDRIVER

Talks to the test in lines. On stdout: `up-seen STATE NAVIGATIONS` once the page is live
and shows the target `cache` up; then, after the test writes `killed` on stdin,
`down-seen STATE`, `kept MARK NAVIGATIONS` (a value set on `window` at load, still
there if the page never reloaded), `event TEXT` (the row of cache's disconnect),
`console-errors JSON` and `screenshot PATH`; after `reloaded` (a reload added `search`
and removed `sessions`), `added ADDRESS PROBE` and `listed ADDED REMOVED`; after
`restored`, `up-again STATE`, `dark PATH` (a screenshot in the dark theme), `phone
PAGE-WIDTH WINDOW-WIDTH PATH` (at a phone's width), `kept MARK NAVIGATIONS` again,
and `done`. Any failure: `error WHY`, exit 1.
Every wait is bounded.
"""

import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

LIMIT = 20  # seconds for any one thing to show on the page
POLL = 0.05


def say(*words):
    print(*words, flush=True)


def state_of(driver, target):
    """The text of the target's state cell, or None while it has no row."""
    return driver.execute_script(
        """
        for (const tr of document.querySelectorAll('#targets tbody tr'))
          if (tr.dataset.target === arguments[0]) return tr.querySelector('td.state').textContent.trim();
        return null;
        """,
        target,
    )


def row_cells(driver, target):
    """The texts of the target's cells, or an empty list while it has no row."""
    return driver.execute_script(
        """
        for (const tr of document.querySelectorAll('#targets tbody tr'))
          if (tr.dataset.target === arguments[0]) return [...tr.cells].map(c => c.textContent);
        return [];
        """,
        target,
    ) or [None] * 7


def expect(word):
    line = sys.stdin.readline().strip()
    if line != word:
        raise RuntimeError(f"expected {word!r} from the test, got {line!r}")


def navigations(driver):
    return driver.execute_script("return performance.getEntriesByType('navigation').length")


def main():
    url, screenshot, chromium, chromedriver = sys.argv[1:5]
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,560", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is named: Selenium Manager never runs (the test has no internet).
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.set_page_load_timeout(LIMIT)
        driver.get(url)
        wait = WebDriverWait(driver, LIMIT, poll_frequency=POLL)
        wait.until(lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "live")
        wait.until(lambda d: state_of(d, "cache") == "up")
        driver.execute_script("window.tetherMark = 'loaded-once'")
        say("up-seen", state_of(driver, "cache"), navigations(driver))

        expect("killed")
        wait.until(lambda d: state_of(d, "cache") in ("down", "failed"))
        say("down-seen", state_of(driver, "cache"))
        say("kept", driver.execute_script("return window.tetherMark || 'gone'"), navigations(driver))

        row = wait.until(lambda d: d.execute_script(
            """
            for (const tr of document.querySelectorAll('#events tbody tr'))
              if (tr.cells[1].textContent === 'cache' && tr.cells[2].textContent.includes('(disconnect)'))
                return tr.textContent;
            return null;
            """))
        say("event", " ".join(row.split()))

        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        say("console-errors", json.dumps(severe))
        driver.save_screenshot(screenshot)
        say("screenshot", screenshot)

        expect("reloaded")
        wait.until(lambda d: state_of(d, "sessions") is None and row_cells(d, "search")[6])
        cells = row_cells(driver, "search")
        say("added", cells[5], cells[6])
        listed = wait.until(lambda d: d.execute_script(
            """
            const seen = (who, what) => [...document.querySelectorAll('#events tbody tr')]
              .some(tr => tr.cells[1].textContent === who && tr.cells[2].textContent === what);
            return seen('search', 'added') && seen('sessions', 'removed') ? 'true true' : null;
            """))
        say("listed", listed)

        expect("restored")
        wait.until(lambda d: state_of(d, "cache") == "up")
        say("up-again", state_of(driver, "cache"))
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        dark = screenshot.replace(".png", "-dark.png")
        driver.save_screenshot(dark)
        say("dark", dark)
        driver.set_window_size(390, 844)
        phone = screenshot.replace(".png", "-phone.png")
        driver.save_screenshot(phone)
        say("phone", driver.execute_script(
            "return document.documentElement.scrollWidth + ' ' + window.innerWidth"), phone)
        say("kept", driver.execute_script("return window.tetherMark || 'gone'"), navigations(driver))
        say("done")
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        say("error", f"{type(e).__name__}: {e}".replace("\n", " "))
        sys.exit(1)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
