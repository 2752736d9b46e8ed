"""Errors a client can cause, each with an HTTP status and a stable code.

Pure: the API layer maps these to JSON bodies; the domain raises them.
"""

from __future__ import annotations


class ClientError(Exception):
    """Something wrong with the client's request, reported as JSON."""

    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        self.field = field
        self.headers = dict(headers or {})

    def to_json(self) -> dict[str, object]:
        """The body clients receive: C{{"error": {"code", "message"[, "field"]}}}."""
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class SpecError(ClientError):
    """The job spec in a POST body is invalid (always a 400)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(code, message, status=400, field=field)


def not_found(what: str, ident: object) -> ClientError:
    """A 404 for an unknown id."""
    return ClientError(f"{what.upper()}_NOT_FOUND", f"no {what} with id {ident}", status=404)
