"""PATCH /api/jobs/{id}: cancel, or change a job that has not started.

Pure: the body is checked here, and the changed spec is validated by
L{cmdd.spec.parse_spec} exactly like a submit (same codes).
"""

from __future__ import annotations

from typing import Any

import attrs

from cmdd.errors import SpecError
from cmdd.spec import JobSpec, parse_spec

#: What a job that has not started accepts; C{null} removes the field.
MODIFIABLE = frozenset({"environment", "labels", "timeout", "run_at"})
_CANCEL = {"status": "cancelled"}


def parse_patch(body: object) -> dict[str, Any] | None:
    """The changes a PATCH body asks for, or C{None} for a cancel.

    @raise SpecError: neither a cancel nor only modifiable fields (a mix too).
    """
    if not isinstance(body, dict) or not body:
        raise SpecError("INVALID_PATCH", "a PATCH body is a non-empty JSON object")
    if body == _CANCEL:
        return None
    if "status" in body:
        raise SpecError(
            "INVALID_PATCH",
            'cancel with {"status": "cancelled"} alone, not mixed with other changes',
            "status",
        )
    for field in body:
        if field not in MODIFIABLE:
            raise SpecError(
                "INVALID_PATCH",
                f"{field!r} cannot be changed; a job that has not started accepts "
                + ", ".join(sorted(MODIFIABLE)),
                str(field),
            )
    return body


def patched_spec(spec: JobSpec, changes: dict[str, Any], now: float) -> JobSpec:
    """C{spec} with C{changes} applied, validated like a new job's spec."""
    merged = spec.to_json()
    for field, value in changes.items():
        if value is None:
            merged.pop(field, None)
        else:
            merged[field] = value
    changed = parse_spec(merged, now=now)
    if "run_at" not in changes:
        # Kept exactly (its text form is rounded to microseconds).
        changed = attrs.evolve(changed, run_at=spec.run_at)
    return changed
