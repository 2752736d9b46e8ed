"""The OpenAPI description matches the real routing table, both ways."""

from __future__ import annotations

import re

from cmdd.api import CmddAPI
from cmdd.openapi import description


def described() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in description()["paths"].items()
        for method in operations
    }


def routed() -> set[tuple[str, str]]:
    out = set()
    for rule in CmddAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((method, path))
    return out


def test_every_route_is_described_and_nothing_else() -> None:
    """A route missing from the description (or described but gone) fails here."""
    assert routed() == described()


def test_description_is_openapi_3_1_with_errors_everywhere() -> None:
    """Every operation documents its success and the 401 error body."""
    document = description()
    assert document["openapi"] == "3.1.0"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert any(code.startswith("2") for code in responses), (method, path)
            if path not in ("/healthz", "/readyz"):
                assert "401" in responses, (method, path)
