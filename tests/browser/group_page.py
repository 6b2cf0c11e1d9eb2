"""Drives tether's status page in headless Chromium for the failover group scenario of
tests/integration/status_page.rs.

Usage: group_page.py URL SCREENSHOT CHROMIUM CHROMEDRIVER

Talks to the test in lines. On stdout: `decided ACTIVE NAVIGATIONS` once the page is live
and the group `store` shows its active member; after the test writes `killed` on stdin,
`switched ACTIVE HIGHLIGHTED` (the member now shown active, and the member highlighted in
the members cell), `event TEXT` (the row of the group's change), `summary TEXT`,
`kept MARK NAVIGATIONS` (a value set on `window` at load, still there if the page never
reloaded), `console-errors JSON`, `screenshot PATH` and `done`. Any failure: `error WHY`,
exit 1. Every wait is bounded.
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


def group(driver):
    """The active cell's text and the highlighted member of `store`, or None without a row."""
    return driver.execute_script(
        """
        for (const tr of document.querySelectorAll('#groups tbody tr'))
          if (tr.dataset.group === 'store') {
            const on = tr.querySelector('td.members .on');
            return [tr.querySelector('td.active').textContent.trim(), on ? on.textContent : '-'];
          }
        return null;
        """
    )


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
        wait.until(lambda d: (group(d) or ["undecided"])[0] != "undecided")
        driver.execute_script("window.tetherMark = 'loaded-once'")
        say("decided", group(driver)[0], navigations(driver))

        expect_line = sys.stdin.readline().strip()
        if expect_line != "killed":
            raise RuntimeError(f"expected 'killed' from the test, got {expect_line!r}")
        wait.until(lambda d: group(d)[0] == "b")
        say("switched", *group(driver))
        row = wait.until(lambda d: d.execute_script(
            """
            for (const tr of document.querySelectorAll('#events tbody tr'))
              if (tr.cells[1].textContent === 'store' && tr.cells[2].textContent.includes('(active-lost)'))
                return tr.textContent;
            return null;
            """))
        say("event", " ".join(row.split()))
        say("summary", driver.find_element(By.ID, "summary").text)
        say("kept", driver.execute_script("return window.tetherMark || 'gone'"), navigations(driver))
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        say("console-errors", json.dumps(severe))
        driver.save_screenshot(screenshot)
        say("screenshot", screenshot)
        say("done")
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        say("error", f"{type(e).__name__}: {e}".replace("\n", " "))
        sys.exit(1)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
