# ruff: noqa: F811 (the fixtures imported from test_console_browser are parameters here)
"""More of the web console in a real browser: what a user sees when things
go wrong (a bad pasted token, a daemon that stops answering a while),
schedules managed from the page, the submit form's other fields, and
colours. Same daemon and browser set-up as test_console_browser.py."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_client_cli import TlsDaemon
from test_console_browser import (  # noqa: F401 (fixtures)
    DOCS,
    IMG_PROBE,
    TRAP,
    Api,
    alice_token,
    api,
    browser,
    daemon,
    job_state,
    log_in,
    no_script_errors,
    shown,
    submit_form,
    text_of,
    wait,
)

pytestmark = pytest.mark.integration


def test_a_token_no_header_can_carry_leaves_no_session(
    browser: WebDriver, daemon: TlsDaemon
) -> None:
    """A pasted "token" that fetch() cannot send (not Latin-1) is refused on
    the form and not kept: a reload shows the login form again, not a job
    list that fails on every call."""
    browser.get(daemon.url + "/ui/#/login")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "login-view").is_displayed())
    browser.find_element(By.ID, "login-token").send_keys("токен")
    browser.find_element(By.ID, "token-submit").click()
    wait(browser, lambda d: text_of(d, "login-error") != "")
    assert browser.execute_script("return sessionStorage.getItem('cmdd.session')") is None
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "login-view").is_displayed())
    assert not browser.find_element(By.ID, "jobs-view").is_displayed()


def test_job_page_recovers_when_the_daemon_answers_again(
    browser: WebDriver, daemon: TlsDaemon
) -> None:
    """While the daemon cannot be reached (restarting) the job page says so;
    once it answers again the message goes away by itself."""
    log_in(browser, daemon)
    submit_form(browser, daemon, "echo hi")
    wait(browser, lambda d: job_state(d) == "succeeded")
    browser.execute_script(
        "window.__fetch = window.fetch;"
        "window.fetch = () => Promise.reject(new TypeError('Failed to fetch'));"
    )
    wait(browser, lambda d: "Failed to fetch" in text_of(d, "job-error"))
    browser.execute_script("window.fetch = window.__fetch;")
    wait(browser, lambda d: text_of(d, "job-error") == "", message="the error stayed")
    assert job_state(browser) == "succeeded"


def _spans(driver: WebDriver, selector: str) -> list[Any]:
    script = (
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(s => [s.tagName, s.className, s.textContent])"
    )
    return list(driver.execute_script(script, selector))


def test_basic_colours_become_classes_and_the_rest_is_stripped(
    browser: WebDriver, daemon: TlsDaemon
) -> None:
    """Red, bright bold green and a background are spans with classes (their
    text set as text); 256-colour, underline and an SGR holding HTML are
    dropped, leaving plain text; nothing but spans is made."""
    log_in(browser, daemon)
    command = (
        r"printf '\033[31mred\033[0m \033[1;92mbright\033[22;44mblue-bg\033[0m "
        r"\033[38;5;196mx256\033[0m \033[4munder\033[0m \033[31;<b>m%s\n' '<i>i</i>'"
    )
    submit_form(browser, daemon, command)
    wait(browser, lambda d: job_state(d) == "succeeded")
    wait(browser, lambda d: "under" in text_of(d, "job-stdout"))
    browser.execute_script(TRAP)
    assert text_of(browser, "job-stdout") == "red brightblue-bg x256 under >m<i>i</i>"
    coloured = [s for s in _spans(browser, "#job-stdout span span") if s[1]]
    assert coloured == [
        ["SPAN", "ansi-fg-1", "red"],
        ["SPAN", "ansi-bold ansi-fg-10", "bright"],
        ["SPAN", "ansi-fg-10 ansi-bg-4", "blue-bg"],
    ]
    tags = browser.execute_script(
        "return [...document.querySelectorAll('#job-stdout *')].map(e => e.tagName)"
    )
    assert set(tags) == {"SPAN"}
    assert browser.execute_script("return window.__xss") == "unset"
    browser.save_screenshot(str(DOCS / "console-colours.png"))
