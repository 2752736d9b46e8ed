"""The web console: static assets under C{/ui/}, served from memory.

The console is a page and a script; the API does the work. Its assets ship
as package data (C{cmdd/ui/}) and are read once, when the daemon is
built, so a request never touches the file system. They need no token (the
page asks for one); the API calls the page makes carry C{Authorization:
Bearer}. Every answer, errors too, carries a strict Content-Security-Policy:
scripts and styles only from these files, no inline code, no other origin,
no framing.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

import attrs
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from cmdd.errors import ClientError
from cmdd.web import respond_json

#: Where the console lives; C{/ui} itself redirects here.
PREFIX = b"/ui/"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: No inline script or style, nothing from another origin, never in a frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@attrs.frozen
class Asset:
    """One file of the console, in memory."""

    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The console's files from the package (C{cmdd/ui/*}), by name."""
    assets: dict[str, Asset] = {}
    for entry in files("cmdd").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        tag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
        assets[entry.name] = Asset(body, _TYPES[suffix], tag)
    return assets


class ConsoleResource(Resource):
    """Serves C{GET}/C{HEAD /ui/…} from memory; anything else is a JSON error."""

    isLeaf = True

    def __init__(self, assets: dict[str, Asset] | None = None) -> None:
        super().__init__()
        self._assets = load_assets() if assets is None else assets

    def render(self, request: IRequest) -> bytes:
        """The asset the path names, or a JSON 404/405 (with the same headers)."""
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        try:
            return self._answer(request)
        except ClientError as error:
            return respond_json(request, error.to_json(), error.status, error.headers)

    def _answer(self, request: IRequest) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            method = request.method.decode("ascii", "replace")
            raise ClientError(
                "METHOD_NOT_ALLOWED",
                f"{method} is not allowed here; use GET, HEAD",
                status=405,
                headers={"Allow": "GET, HEAD"},
            )
        path = request.path
        if path == PREFIX.rstrip(b"/"):
            raise ClientError(
                "PERMANENT_REDIRECT",
                "the console is at /ui/",
                status=308,
                headers={"Location": "/ui/"},
            )
        name = path.removeprefix(PREFIX).decode("ascii", "replace") or "index.html"
        asset = self._assets.get(name)
        if asset is None or not path.startswith(PREFIX):
            raise ClientError("ASSET_NOT_FOUND", "the console has no such file", status=404)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", asset.etag.encode("ascii"))
        wanted = request.getHeader("if-none-match") or ""
        if asset.etag in (tag.strip() for tag in wanted.split(",")):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", asset.content_type.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(asset.body))
        return asset.body


def is_console_path(path: bytes) -> bool:
    """Whether the console (not the API) answers this path."""
    return path == PREFIX.rstrip(b"/") or path.startswith(PREFIX)
