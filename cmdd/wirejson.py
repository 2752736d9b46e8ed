"""JSON on the wire: the media type, the encoding, and status lines.

Shared by the resources (L{cmdd.web}) and the connection-level answers
(L{cmdd.channel}) that Twisted would otherwise give itself.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from twisted.web.http import RESPONSES

JSON_TYPE = b"application/json; charset=utf-8"


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of C{status}.

    Twisted's table lacks some (429, 422), and its status line would then
    read "429 Unknown Status"; Python's C{HTTPStatus} fills the gaps.
    """
    phrase = RESPONSES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            phrase = b"Unknown Status"
    return phrase


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON with a final newline (friendly to curl users).

    C{backslashreplace} turns a lone surrogate (possible in a client's echoed
    field name) into a valid JSON C{\\uXXXX} escape instead of failing.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8", "backslashreplace")
