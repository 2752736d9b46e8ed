"""The web console's static files under /ui/ (in memory, through the gate)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_api import Client

from cmdd.console import CONTENT_SECURITY_POLICY, ConsoleResource, load_assets


@pytest.fixture
def client(tmp_path: Path) -> Client:
    """An API whose gate serves the console; requests carry no token."""
    served = Client(tmp_path, console=ConsoleResource())
    served.token = None
    return served


def body_of(client: Client, path: str) -> str:
    """The body of a GET, as text."""
    return client.request("GET", path)[1].decode()


def _security_headers_present(headers: object) -> None:
    get = headers.getRawHeaders  # type: ignore[attr-defined]
    assert get("content-security-policy") == [CONTENT_SECURITY_POLICY]
    assert get("x-content-type-options") == ["nosniff"]
    assert get("referrer-policy") == ["no-referrer"]


def test_console_is_served_without_a_token_with_strict_headers(client: Client) -> None:
    """GET /ui/ needs no token and answers the page with a CSP that allows
    no inline script or style, no other origin and no framing."""
    response, body = client.request("GET", "/ui/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert b'<script src="app.js"' in body and b"<style" not in body
    _security_headers_present(response.headers)
    policy = CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    kinds = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
    assets = load_assets()
    assert {"app.js", "api.js", "output.js", "app.css"} <= set(assets)
    for name, asset in assets.items():
        response, body = client.request("GET", "/ui/" + name)
        assert response.code == 200 and body == asset.body
        kind = kinds[name.rpartition(".")[2]]
        assert response.headers.getRawHeaders("content-type") == [kind + "; charset=utf-8"]
        _security_headers_present(response.headers)
    for script in re.findall(r'<script src="([^"]+)"', page := body_of(client, "/ui/")):
        assert script in assets, f"{script} is not served"
    assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', page) == ["app.css"]


def test_page_has_no_inline_code() -> None:
    """The page holds no inline script, style or event handler attribute
    (the CSP would block them, and none is needed)."""
    page = load_assets()["index.html"].body.decode()
    assert "<script>" not in page and "<style" not in page and "style=" not in page
    assert not re.search(r"\son[a-z]+\s*=", page), "an inline event handler"
    assert "javascript:" not in page


def test_head_and_conditional_get(client: Client) -> None:
    """HEAD answers the headers without a body; If-None-Match gets a 304."""
    response, body = client.request("HEAD", "/ui/app.js")
    assert response.code == 200 and body == b""
    tag = response.headers.getRawHeaders("etag")[0]
    response, body = client.request("GET", "/ui/app.js", headers={"If-None-Match": tag})
    assert response.code == 304 and body == b""


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/../api/jobs",
        "/ui/%2e%2e/api/jobs",
        "/ui/%2E%2E/%2e%2e/etc/passwd",
        "/ui/..%2fapi%2fjobs",
        "/ui//etc/passwd",
        "/ui/app.js/",
        "/ui/.%2e/cmdd.toml",
    ],
)
def test_unknown_assets_and_traversal_are_json_404s(client: Client, path: str) -> None:
    """An unknown file, or a path that climbs out of /ui/, is a JSON 404 with
    the console's headers, never a file of the data directory nor the API
    answered without a token."""
    code, body, headers = client.json("GET", path)
    assert code == 404 and body["error"]["code"] == "ASSET_NOT_FOUND"
    _security_headers_present(headers)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(client: Client, method: str) -> None:
    """Only GET and HEAD: anything else is a JSON 405 naming them."""
    code, body, headers = client.json(method, "/ui/index.html")
    assert code == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert headers.getRawHeaders("allow") == ["GET, HEAD"]


def test_bare_ui_redirects_to_the_console(client: Client) -> None:
    """/ui (no slash) redirects to /ui/ with a relative Location."""
    code, _body, headers = client.json("GET", "/ui")
    assert code == 308 and headers.getRawHeaders("location") == ["/ui/"]


def test_api_still_needs_a_token(client: Client) -> None:
    """Serving the console opens nothing else: the API is still 401 without a token."""
    code, body, _ = client.json("GET", "/api/jobs")
    assert code == 401 and body["error"]["code"]
    assert "jobs" not in body


def test_scripts_never_parse_html() -> None:
    """The console's scripts use no API that parses a string as HTML or code,
    so job output and user strings can only ever be text."""
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|eval\(|new Function"
        r"|createContextualFragment|srcdoc|setAttribute\(\s*[\"']on"
    )
    scripts = {name: asset for name, asset in load_assets().items() if name.endswith(".js")}
    assert len(scripts) >= 3
    for name, asset in scripts.items():
        assert not sinks.search(asset.body.decode()), f"{name} parses HTML or code"
