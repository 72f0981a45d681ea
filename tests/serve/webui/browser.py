"""Headless Chromium (Debian's chromium + chromium-driver, installed by `scripts/setup.sh --test`)
driven through selenium, and the few page actions the tests need."""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

CHROMIUM = os.environ.get("LMSERVE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LMSERVE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
# The closed network refuses every connection a browser makes on its own (updates, sync, QUIC).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,900")


def chromium_or_skip():
    """A fresh headless Chromium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.exists(path) or shutil.which(path)):
            pytest.skip(f"no browser: {path} is missing (apt-get install {package}, or bash scripts/setup.sh --test)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="lmserve-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except Exception as e:          # a browser that is there but cannot start here
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium did not start: {type(e).__name__}: {str(e)[:300]}")
    driver.set_page_load_timeout(60)
    driver.lmserve_profile = profile     # removed by close_browser
    return driver


def close_browser(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.lmserve_profile, ignore_errors=True)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class ChatPage:
    """One browser tab showing the chat page."""

    def __init__(self, driver, handle: str):
        self.driver, self.handle = driver, handle

    @classmethod
    def open(cls, driver, url: str, new_tab: bool = False) -> "ChatPage":
        if new_tab:
            driver.switch_to.new_window("tab")
        driver.get(url)
        page = cls(driver, driver.current_window_handle)
        wait_for(lambda: driver.find_elements("css selector", "#lmserve-input textarea"), what="the page to load")
        return page

    def focus(self) -> "ChatPage":
        if self.driver.current_window_handle != self.handle:
            self.driver.switch_to.window(self.handle)
        return self

    def js(self, script: str, *args):
        return self.focus().driver.execute_script(script, *args)

    def ask(self, text: str) -> None:
        box = self.focus().driver.find_element("css selector", "#lmserve-input textarea")
        box.send_keys(text)
        self.driver.find_element("css selector", "#lmserve-send").click()

    def paste_and_send(self, text: str) -> None:
        """Put a long text in the input as a paste would (typing it key by key is slow), then send."""
        self.js("const box = document.querySelector('#lmserve-input textarea');"
                "box.value = arguments[0]; box.dispatchEvent(new Event('input', {bubbles: true}));", text)
        self.driver.find_element("css selector", "#lmserve-send").click()

    def set_setting(self, elem_id: str, value) -> None:
        """Type a value into one of the Settings (a slider's number box, or the system prompt)."""
        from selenium.webdriver.common.keys import Keys
        driver = self.focus().driver
        if not driver.find_elements("css selector", f"#{elem_id}"):          # the accordion is closed
            driver.find_element("css selector", "#lmserve-settings button").click()
        box = wait_for(lambda: driver.find_elements("css selector", f"#{elem_id} input[type=number], "
                                                                    f"#{elem_id} textarea"), what=elem_id)[0]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value))
        box.send_keys(Keys.TAB)         # a number box takes its value when it loses the focus

    def click(self, elem_id: str) -> None:
        self.focus().driver.find_element("css selector", f"#{elem_id}").click()

    def messages(self) -> list[tuple[str, str]]:
        """(role, text) of every message shown in the chat box."""
        return [tuple(m) for m in self.js(
            "return [...document.querySelectorAll('#lmserve-chat [data-testid=user], "
            "#lmserve-chat [data-testid=bot]')].map(m => [m.dataset.testid, m.innerText.trim()]);")]

    def status(self) -> str:
        return self.js("return document.querySelector('#lmserve-status').innerText.trim();")

    def input_text(self) -> str:
        return self.js("return document.querySelector('#lmserve-input textarea').value;")

    def record_answer_lengths(self) -> None:
        """From now on, note the length of the last answer after every change the page makes."""
        self.js("window.lmserveLengths = [];"
                "new MutationObserver(() => {"
                "  const bots = document.querySelectorAll('#lmserve-chat [data-testid=bot]');"
                "  if (bots.length) window.lmserveLengths.push(bots[bots.length - 1].innerText.trim().length);"
                "}).observe(document.querySelector('#lmserve-chat'), "
                "{subtree: true, childList: true, characterData: true});")

    def answer_lengths(self) -> list[int]:
        return self.js("return window.lmserveLengths;")

    def page_text(self) -> str:
        return self.js("return document.body.innerText;")
