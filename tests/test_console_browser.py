"""The web console in a real browser (headless Debian Chromium via selenium)
against a real `twistd cmdd` over TLS: log in, submit, watch output live,
cancel, lose the session when the token is revoked, and XSS probes.

The screenshots in docs/ are taken here, so they show the console as it is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_client_cli import TlsDaemon

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parent.parent / "docs"
BIN = Path(sys.executable).parent
PASSWORD = "console-pass-Zq8"
IMG_PROBE = "<img src=x onerror=alert(1)>"
#: An OSC 8 hyperlink to javascript: (terminals make it a link; we drop it).
OSC_PROBE = "\x1b]8;;javascript:alert(1)\x1b\\x\x1b]8;;\x1b\\"
#: A progress bar in colour: CRs redraw the line, SGR escapes are dropped.
COLOURED_PROGRESS = "\x1b[1;32m10%\r50%\r100%\x1b[0m done"
#: A flag that stays "unset" unless something calls alert().
TRAP = "window.__xss = 'unset'; window.alert = () => { window.__xss = 'alert'; };"

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(
        "browser tests need Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def spki_pin(cert_pem: bytes) -> str:
    """Chromium's pin for a certificate: base64 SHA-256 of its public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class Api:
    """Plain HTTPS calls to the daemon, trusting its own certificate."""

    def __init__(self, daemon: TlsDaemon) -> None:
        self.url = daemon.url
        self.context = ssl.create_default_context(
            cafile=str(daemon.data_dir / "tls" / "cert.pem")
        )
        self.context.check_hostname = False

    def call(self, method: str, path: str, auth: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", auth)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDaemon]:
    # A small output cap, so a test can show truncation cheaply.
    cap = ("--max-output-bytes", "4096")
    running = TlsDaemon(tmp_path_factory.mktemp("console"), cmdd_args=cap)
    try:
        subprocess.run(
            [str(BIN / "cmdd"), "user", "add", "alice", "--data-dir", str(running.data_dir),
             "--password-stdin"],
            input=PASSWORD, text=True, check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        yield running
    finally:
        running.stop()
    # Neither the password nor any token reaches the daemon's log.
    log = running.log_path.read_text()
    assert PASSWORD not in log and running.token not in log and "cmdd_" not in log


@pytest.fixture(scope="module")
def api(daemon: TlsDaemon) -> Api:
    return Api(daemon)


@pytest.fixture(scope="module")
def browser(
    daemon: TlsDaemon, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    pin = spki_pin((daemon.data_dir / "tls" / "cert.pem").read_bytes())
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        # Trust exactly this daemon's self-signed key, nothing else.
        f"--ignore-certificate-errors-spki-list={pin}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def no_script_errors(browser: webdriver.Chrome) -> Iterator[None]:
    """No test leaves an uncaught script error or a CSP violation in the
    browser's console (our own code must run under the strict policy)."""
    browser.get_log("browser")  # drop what came before
    yield
    problems = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Uncaught" in entry["message"] or "Content Security Policy" in entry["message"]
    ]
    assert problems == []


def wait(driver: WebDriver, condition: Any, timeout: float = 10, message: str = "") -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: condition(d), message
    )


def text_of(driver: WebDriver, element_id: str) -> str:
    """What an element shows, read in one script (live views replace rows)."""
    return shown(driver, "#" + element_id)


def shown(driver: WebDriver, selector: str) -> str:
    """The rendered text of the first element matching a CSS selector ("" if none)."""
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector
    )
    return str(text).strip()


def log_in(driver: WebDriver, daemon: TlsDaemon) -> None:
    driver.get(daemon.url + "/ui/#/login")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    wait(driver, lambda d: d.find_element(By.ID, "login-view").is_displayed())
    driver.find_element(By.ID, "login-user").send_keys("alice")
    driver.find_element(By.ID, "login-password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-submit").click()
    wait(
        driver,
        lambda d: d.find_element(By.ID, "jobs-view").is_displayed(),
        # The password is checked with scrypt on a thread: slow on a busy CI.
        timeout=30,
        message=f"no list: {text_of(driver, 'login-error')!r} at {driver.current_url}",
    )
    assert "signed in as alice" in text_of(driver, "who")


def alice_token(api: Api) -> str:
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    code, token = api.call("POST", "/api/tokens", "Basic " + basic, {"expires_in": 600})
    assert code == 201
    return str(token["token"])


def job_state(driver: WebDriver) -> str:
    return shown(driver, "#job-title .state")


def submit_form(driver: WebDriver, daemon: TlsDaemon, command: str, **fields: str) -> None:
    driver.get(daemon.url + "/ui/#/submit")
    wait(driver, lambda d: d.find_element(By.ID, "submit-view").is_displayed())
    for name, value in {"command": command, **fields}.items():
        box = driver.find_element(By.ID, "submit-" + name)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "submit-button").click()


def test_log_in_submit_and_watch_output_live(
    browser: WebDriver, daemon: TlsDaemon, api: Api
) -> None:
    """A user logs in with a password, submits a shell command, sees its
    first line while it still runs, then the rest and the exit code; the
    list shows it; a bad field gets the API's message next to it."""
    log_in(browser, daemon)
    # The token is in this tab's sessionStorage, never in the URL or a cookie.
    assert "cmdd_" not in browser.current_url and not browser.get_cookies()
    submit_form(
        browser, daemon, "echo first; sleep 3; echo second >&2; exit 3",
        env="GREETING=hello", labels="team=console",
    )  # fmt: skip
    wait(browser, lambda d: d.find_element(By.ID, "job-view").is_displayed())
    # Live: the first line shows while the job sleeps (3 s) before the next.
    wait(browser, lambda d: "first" in text_of(d, "job-stdout"), message="no live output")
    assert job_state(browser) in ("queued", "running")
    assert "second" not in text_of(browser, "job-stderr"), "output before it was written"
    wait(browser, lambda d: "second" in text_of(d, "job-stderr"), message="no stderr")
    wait(browser, lambda d: job_state(d) == "failed")
    wait(browser, lambda d: "exit code\n3" in text_of(d, "job-outcome"))
    assert "team=console" in text_of(browser, "job-spec")
    assert "running" in text_of(browser, "job-timeline")
    DOCS.mkdir(exist_ok=True)
    browser.save_screenshot(str(DOCS / "console-job.png"))

    submit_form(browser, daemon, "true", timeout="-5")
    error = browser.find_element(By.CSS_SELECTOR, '.field-error[data-field="timeout"]')
    wait(browser, lambda d: error.text != "", message="no field error")
    assert "timeout" in error.text
    assert browser.find_element(By.ID, "submit-view").is_displayed()
    browser.save_screenshot(str(DOCS / "console-submit.png"))

    token = "Bearer " + alice_token(api)
    for spec in (
        {"command_line": ["make", "-C", "/srv/site", "deploy"], "labels": {"team": "web"}},
        {"command": "echo nightly backup", "labels": {"team": "ops"}},
        {"command": "sleep 2; echo report done", "labels": {"team": "ops"}},
    ):
        assert api.call("POST", "/api/jobs", token, spec)[0] == 202
    browser.get(daemon.url + "/ui/#/jobs")
    wait(browser, lambda d: "sleep 2" in text_of(d, "jobs-body"))
    row = shown(browser, "#jobs-body tr[data-job-id='1']")
    assert "failed" in row and "alice" in row and row.endswith("3")
    assert "sleep 2" in shown(browser, "#jobs-body tr"), "newest first"
    browser.save_screenshot(str(DOCS / "console-jobs.png"))
    # The list follows the job without a reload.
    wait(browser, lambda d: "succeeded" in shown(d, "#jobs-body tr"))
    # The API's own filters: a label, then a state as well.
    browser.find_element(By.ID, "filter-label").send_keys("team:ops")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait(browser, lambda d: "make" not in text_of(d, "jobs-body"))
    assert "nightly backup" in text_of(browser, "jobs-body")
    browser.find_element(By.CSS_SELECTOR, "#filter-state option[value='']").click()
    browser.find_element(By.CSS_SELECTOR, "#filter-state").send_keys("failed")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait(browser, lambda d: d.find_element(By.ID, "jobs-empty").is_displayed())
    browser.find_element(By.ID, "filter-label").clear()
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait(browser, lambda d: "make -C" in text_of(d, "jobs-body"))
    assert "nightly backup" not in text_of(browser, "jobs-body")
    browser.set_window_size(390, 844)
    try:
        browser.save_screenshot(str(DOCS / "console-phone.png"))
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, "the list is readable on a phone without scrolling sideways"
    finally:
        browser.set_window_size(1280, 900)


def test_cancel_a_running_job(browser: WebDriver, daemon: TlsDaemon) -> None:
    """The Cancel button ends a running job; the page shows it cancelled."""
    log_in(browser, daemon)
    submit_form(browser, daemon, "echo started; sleep 60")
    wait(browser, lambda d: "started" in text_of(d, "job-stdout"))
    # The badge follows the job's state within a refresh (2 s).
    wait(browser, lambda d: job_state(d) == "running")
    browser.find_element(By.ID, "job-cancel").click()
    wait(browser, lambda d: job_state(d) == "cancelled", timeout=15, message="not cancelled")
    wait(browser, lambda d: not d.find_element(By.ID, "job-delete").get_attribute("disabled"))
    delete = browser.find_element(By.ID, "job-delete")
    delete.click()
    delete.click()
    wait(browser, lambda d: d.find_element(By.ID, "jobs-view").is_displayed())


def test_revoked_token_returns_to_login(
    browser: WebDriver, daemon: TlsDaemon, api: Api
) -> None:
    """Once the console's token is revoked, its next call gets a 401 and the
    page shows the login form, saying why."""
    log_in(browser, daemon)
    session = json.loads(browser.execute_script("return sessionStorage.getItem('cmdd.session')"))
    code, _ = api.call("DELETE", f"/api/tokens/{session['id']}", "Bearer " + daemon.token)
    assert code == 204
    wait(browser, lambda d: d.find_element(By.ID, "login-view").is_displayed(), message="no 401")
    assert "revoked" in text_of(browser, "login-error")
    assert browser.execute_script("return sessionStorage.getItem('cmdd.session')") is None


def test_xss_probes_are_shown_as_text(browser: WebDriver, daemon: TlsDaemon, api: Api) -> None:
    """A job whose command, labels and output hold HTML and a terminal
    hyperlink to javascript: shows them as text: no element is made, no
    script runs, no link appears. Colour escapes are stripped and a CR
    redraws the line, as in a terminal."""
    shell = (
        f": '{OSC_PROBE}'; printf '%s\\n' '{IMG_PROBE}' \"$OSC\" \"$BAR\"; printf '%s' \"$OSC\" >&2"
    )
    environment = {"OSC": OSC_PROBE, "BAR": COLOURED_PROGRESS}
    spec = {
        "command": shell, "labels": {"probe": IMG_PROBE}, "environment": environment,
        "webhooks": {"ended": "http://127.0.0.1:9/hook"},
    }  # fmt: skip
    code, job = api.call("POST", "/api/jobs", "Bearer " + alice_token(api), spec)
    assert code == 202
    log_in(browser, daemon)
    browser.execute_script(TRAP)
    wait(browser, lambda d: IMG_PROBE in text_of(d, "jobs-body"), message="command not shown")
    browser.get(f"{daemon.url}/ui/#/jobs/{job['id']}")
    browser.execute_script(TRAP)
    wait(browser, lambda d: job_state(d) == "succeeded")
    wait(browser, lambda d: "x" in text_of(d, "job-stderr"))
    stdout = text_of(browser, "job-stdout")
    assert stdout.splitlines() == [IMG_PROBE, "x", "100% done"], stdout
    assert text_of(browser, "job-stderr") == "x"
    assert f"probe={IMG_PROBE}" in text_of(browser, "job-spec")
    # Its webhook delivery (to a closed port) shows up with its attempts.
    wait(browser, lambda d: "http://127.0.0.1:9/hook" in text_of(d, "deliveries-body"))
    assert "ended" in text_of(browser, "deliveries-body")
    # Download raw gives the exact bytes, escapes and all.
    download = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const make = URL.createObjectURL;
        const click = HTMLAnchorElement.prototype.click;
        URL.createObjectURL = (blob) => { window.__blob = blob; return make(blob); };
        HTMLAnchorElement.prototype.click = function () {
          HTMLAnchorElement.prototype.click = click;
          URL.createObjectURL = make;
          window.__blob.text().then((text) => done([this.download, text]));
        };
        document.getElementById("download-stdout").click();
    """)
    raw = f"{IMG_PROBE}\n{OSC_PROBE}\n{COLOURED_PROGRESS}\n"
    assert download == [f"job-{job['id']}.stdout", raw]
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.find_elements(By.CSS_SELECTOR, "a[href^='javascript']") == []
    assert browser.execute_script("return window.__xss") == "unset"
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.accept()


def test_pages_never_skip_or_repeat_and_schedules_show(
    browser: WebDriver, daemon: TlsDaemon, api: Api
) -> None:
    """Older/Newer walk the API's cursors: every job once, newest first, also
    while new jobs arrive; the schedules page lists the user's schedules;
    Log out revokes the console's token."""
    token = "Bearer " + alice_token(api)
    for n in range(23):
        assert api.call("POST", "/api/jobs", token, {"command_line": ["true", str(n)]})[0] == 202
    log_in(browser, daemon)

    def ids() -> list[int]:
        # In one script: the live list replaces its rows every few seconds.
        script = "return [...document.querySelectorAll('#jobs-body tr')].map(r => +r.dataset.jobId)"
        return list(browser.execute_script(script))

    wait(browser, lambda d: len(ids()) == 20)
    first = ids()
    # A newcomer shows up on the first page by itself (the list is live).
    _code, job = api.call("POST", "/api/jobs", token, {"command": "true"})
    wait(browser, lambda d: ids()[0] == job["id"], message="the list did not update")
    seen = ids()
    assert seen == [job["id"], *first[:19]]
    _code, listed = api.call("GET", "/api/jobs?limit=1000", token)
    everything = [listed_job["id"] for listed_job in listed["jobs"]]
    while not browser.find_element(By.ID, "page-older").get_attribute("disabled"):
        page = browser.find_element(By.ID, "page-number").text
        browser.find_element(By.ID, "page-older").click()
        wait(browser, lambda d, page=page: text_of(d, "page-number") != page)
        wait(browser, lambda d, seen=seen: bool(ids()) and ids()[0] not in seen)
        seen = seen + ids()
    assert seen == everything, "every job once, newest first"
    last = (len(everything) - 1) // 20
    assert last >= 1 and text_of(browser, "page-number") == f"page {last + 1}"
    browser.find_element(By.ID, "page-newer").click()
    wait(browser, lambda d: ids() == everything[20 * (last - 1) : 20 * last])

    schedule = {"cron": "0 3 * * *", "timezone": "Europe/Berlin",
                "job": {"command": f"backup {IMG_PROBE}"}}  # fmt: skip
    assert api.call("POST", "/api/schedules", token, schedule)[0] == 201
    browser.find_element(By.ID, "nav-schedules").click()
    wait(browser, lambda d: "0 3 * * *" in text_of(d, "schedules-body"))
    assert f"backup {IMG_PROBE}" in text_of(browser, "schedules-body")
    assert "Europe/Berlin" in text_of(browser, "schedules-body")

    session = json.loads(browser.execute_script("return sessionStorage.getItem('cmdd.session')"))
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.find_element(By.ID, "login-view").is_displayed())
    assert api.call("GET", "/api/jobs?limit=1", "Bearer " + daemon.token)[0] == 200
    console_token = "Bearer " + session["token"]
    assert api.call("GET", "/api/jobs", console_token)[0] == 401, "logging out revokes it"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/ui/%2e%2e/tokens.json", 404),
        ("GET", "/ui/../api/jobs", 404),
        ("GET", "/ui/..%2f..%2fetc%2fpasswd", 404),
        ("POST", "/ui/", 405),
        ("DELETE", "/ui/app.js", 405),
        ("GET", "/ui", 308),
    ],
)
def test_real_daemon_answers_console_errors_as_json(
    api: Api, method: str, path: str, status: int
) -> None:
    """Through the real TLS listener, a bad /ui/ request (sent verbatim, not
    normalised by a client) gets its status and a JSON error, with the
    console's headers; HEAD of the page has its length and no body."""
    import http.client

    host, port = api.url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=api.context, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == status and body["error"]["code"]
        assert response.getheader("content-type") == "application/json; charset=utf-8"
        assert "frame-ancestors 'none'" in (response.getheader("content-security-policy") or "")
        connection.request("HEAD", "/ui/")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
        assert int(response.getheader("content-length") or 0) > 0
    finally:
        connection.close()


def test_paste_a_token_as_admin(browser: WebDriver, daemon: TlsDaemon, api: Api) -> None:
    """A pasted token works like a login (an admin sees every user's jobs);
    a bad one is refused on the login form; neither lands in the URL; Log
    out leaves a pasted token alone (it is the user's, not the page's)."""
    alice = "Bearer " + alice_token(api)
    assert api.call("POST", "/api/jobs", alice, {"command": "echo from alice"})[0] == 202
    browser.get(daemon.url + "/ui/#/login")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "login-view").is_displayed())
    browser.find_element(By.ID, "login-token").send_keys("cmdd_nope_" + "x" * 43)
    browser.find_element(By.ID, "token-submit").click()
    wait(browser, lambda d: "invalid" in text_of(d, "login-error"))
    box = browser.find_element(By.ID, "login-token")
    box.clear()
    box.send_keys(daemon.token)
    browser.find_element(By.ID, "token-submit").click()
    wait(browser, lambda d: d.find_element(By.ID, "jobs-view").is_displayed())
    wait(browser, lambda d: "alice" in text_of(d, "jobs-body"), message="admin sees alice's jobs")
    assert "signed in as admin" in text_of(browser, "who")
    assert daemon.token not in browser.current_url
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.find_element(By.ID, "login-view").is_displayed())
    assert api.call("GET", "/api/jobs?limit=1", "Bearer " + daemon.token)[0] == 200


def test_truncated_output_is_said(browser: WebDriver, daemon: TlsDaemon) -> None:
    """Output past the daemon's cap (4096 bytes here): the page shows what was
    kept and says the rest was dropped, in the outcome too."""
    log_in(browser, daemon)
    submit_form(browser, daemon, "head -c 10000 /dev/zero | tr '\\0' a")
    wait(browser, lambda d: "Truncated" in text_of(d, "stdout-note"), message="no note")
    assert "10000 bytes" in text_of(browser, "stdout-note")
    assert len(text_of(browser, "job-stdout")) == 4096
    wait(browser, lambda d: "truncated\nstdout" in text_of(d, "job-outcome"))
