"""The OpenAPI 3.1 description of the API, served at GET /api/openapi.json.

Built here as data; a test checks it against the real routing table, so a
route cannot be added without being described.
"""

from __future__ import annotations

from typing import Any

from cmdd import __version__
from cmdd.jobs import State

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}
LINKS = {"type": "object", "additionalProperties": {"type": "string"}}
STATE = {"type": "string", "enum": [state.value for state in State]}
SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "command": {"type": "string", "minLength": 1},
        "command_line": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "environment": _STRING_MAP,
        "working_directory": {"type": "string"},
        "stdin": {"type": "string"},
        "umask": {"type": "string", "pattern": "^0?[0-7]{3}$"},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "labels": _STRING_MAP,
        "user": {"type": "string"},
        "concurrency_key": {"type": "string",
                            "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:@=+\\-/]{0,127}$"},
        "concurrency_limit": {"type": "integer", "minimum": 1, "maximum": 1000},
        "webhooks": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                name: {"type": "string", "format": "uri", "maxLength": 2048}
                for name in ("begun", "ended", "cancelled", "error")
            },
        },
        "run_at": {"type": "string", "format": "date-time",
                   "description": "RFC 3339 with an offset: scheduled until then"},
    },
}  # fmt: skip
HISTORY_ENTRY = {
    "type": "object",
    "required": ["state", "at"],
    "properties": {
        "state": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
        "run_at": {"type": "string", "format": "date-time"},
        "late": {"type": "number", "description": "seconds after run_at it was released"},
        "by": {"type": "string"},
        "reason": {"type": "string"},
        "exit_code": {"type": "integer"},
        "signal": {"type": "integer"},
    },
}  # fmt: skip
#: An RFC 8941 sf-string (the IETF httpapi idempotency-key draft).
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "a retry with the same key within 24 h returns the original job",
    "schema": {"type": "string", "pattern": '^"([\\x20-\\x21\\x23-\\x5b\\x5d-\\x7e]|'
               '\\\\["\\\\]){1,255}"$'},
}  # fmt: skip
JOB = {
    "type": "object",
    "required": ["id", "state", "owner", "created", "links"],
    "properties": {
        "id": {"type": "integer"},
        "state": STATE,
        "owner": {"type": "string"},
        **SPEC["properties"],  # type: ignore[dict-item]
        "created": _TIME,
        "started": _TIME,
        "completed": _TIME,
        "host": {"type": ["string", "null"], "description": "the host that ran it"},
        "exit_code": {"type": ["integer", "null"]},
        "reason": {"type": ["string", "null"]},
        "cancelled_by": {"type": ["string", "null"]},
        "schedule_id": {"type": "integer", "description": "the schedule that created it"},
        "slurm_job_id": {
            "type": "string",
            "description": "its job id in Slurm (the Slurm executor, once sbatch took it)",
        },
        "slurm_state": {
            "type": "string",
            "description": "a running job's state in Slurm now (PENDING: queued there)",
        },
        "status_history": {"type": "array", "items": HISTORY_ENTRY},
        "links": LINKS,
    },
}
_ATTEMPT = {
    "type": "object",
    "properties": {
        "at": _TIME,
        "duration": {"type": "number"},
        "status_code": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
    },
}
DELIVERIES = {
    "type": "object",
    "required": ["job_id", "deliveries"],
    "properties": {
        "job_id": {"type": "integer"},
        "deliveries": {"type": "array", "items": {"type": "object", "properties": {
            "sequence": {"type": "integer"},
            "callback_type": {"type": "string",
                              "enum": ["begun", "ended", "cancelled", "error"]},
            "url": {"type": "string"},
            "webhook_id": {"type": "string"},
            "made": _TIME,
            "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts_total": {"type": "integer"},
            "attempts": {"type": "array", "items": _ATTEMPT,
                         "description": "the last 20 attempts since the daemon started"},
            "next_retry": _TIME,
            "finished": _TIME,
            "last_status_code": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
        }}},
    },
}  # fmt: skip
WEBHOOK_SECRET = {
    "type": "object",
    "required": ["secret"],
    "properties": {
        "secret": {"type": "string", "pattern": "^whsec_"},
        "created": _TIME,
        "previous_signs_until": _TIME,
    },
}
STATUS = {
    "type": "object",
    "required": ["id", "state", "done"],
    "properties": {
        "id": {"type": "integer"},
        "state": STATE,
        "legacy_state": {"type": "string"},
        "done": {"type": "boolean"},
        "links": LINKS,
    },
}
RESULT = {
    "type": "object",
    "required": ["id", "state"],
    "properties": {
        "id": {"type": "integer"},
        "state": STATE,
        "exit_code": {"type": ["integer", "null"]},
        "signal": {"type": ["integer", "null"]},
        "reason": {"type": ["string", "null"]},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "stdout_bytes": {"type": "integer"},
        "stderr_bytes": {"type": "integer"},
        "truncated": {"type": "object"},
        "cancelled_by": {"type": ["string", "null"]},
        "output_error": {"type": ["string", "null"]},
        "started": _TIME,
        "completed": _TIME,
        "duration": {"type": ["number", "null"]},
        "links": LINKS,
    },
}
_SID = {"name": "schedule_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_SCHEDULE_FIELDS = {
    "cron": {"type": "string", "description": "5 fields: minute hour day month weekday"},
    "timezone": {"type": "string", "description": "IANA name, default UTC"},
    "job": SPEC,
    "concurrency_policy": {"type": "string", "enum": ["allow", "forbid", "replace"]},
    "starting_deadline": {"type": ["number", "null"], "exclusiveMinimum": 0},
    "paused": {"type": "boolean"},
}
SCHEDULE_BODY = {"type": "object", "additionalProperties": False,
                 "properties": _SCHEDULE_FIELDS}
SCHEDULE = {
    "type": "object",
    "required": ["id", "owner", "cron", "timezone", "job", "next_run"],
    "properties": {
        "id": {"type": "integer"},
        "owner": {"type": "string"},
        **_SCHEDULE_FIELDS,
        "job": {"type": "object"},
        "created": _TIME,
        "next_run": {**_TIME, "description": "null while paused; exact across DST"},
        "last_run": _TIME,
        "fired": {"type": "integer"},
        "skipped": {"type": "integer", "description": "fires missed: deadline, forbid, down"},
        "last_jobs": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "state": STATE}}},
        "links": LINKS,
    },
}
TOKEN = {
    "type": "object",
    "required": ["id", "owner", "expires"],
    "properties": {
        "id": {"type": "string"},
        "owner": {"type": "string"},
        "description": {"type": "string"},
        "created": _TIME,
        "expires": _TIME,
        "parent": {"type": ["string", "null"],
                   "description": "the token this one was made with (null: a password)"},
        "token": {"type": "string"},
    },
}
LIST_PARAMETERS = [
    {"name": "state", "in": "query", "schema": STATE},
    {"name": "label", "in": "query", "schema": {"type": "string", "pattern": "^[^:]+:.*$"}},
    {"name": "owner", "in": "query", "schema": {"type": "string"}},
    {"name": "concurrency_key", "in": "query", "schema": {"type": "string"},
     "description": "repeat for any of several keys"},
    {"name": "q", "in": "query", "schema": {"type": "string", "minLength": 1}},
    {"name": "created_after", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "created_before", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "completed_after", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "exit_code", "in": "query", "schema": {"type": "integer"}},
    {"name": "schedule_id", "in": "query", "schema": {"type": "integer"}},
    {
        "name": "sort",
        "in": "query",
        "schema": {
            "type": "string",
            "enum": ["-created", "created", "completed", "-completed", "duration", "-duration"],
        },
    },
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    {"name": "fields", "in": "query", "schema": {"type": "string"}},
]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    described = {
        400: "bad request (see error.code)",
        401: "missing or bad credentials",
        403: "not allowed",
        404: "no such job (or not yours)",
        405: "method not allowed",
        409: "conflict with the job's state",
        413: "body too large",
        415: "body is not JSON",
        416: "range not satisfiable",
        422: "Idempotency-Key already used with a different request",
        429: "too many failed logins for this user from this address (Retry-After)",
        503: "queue full or stopping",
    }
    return {str(code): _json(ERROR, described[code]) for code in (401, *codes)}


def _listing(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key, "next"],
        "properties": {key: {"type": "array", "items": item}, "next": {"type": ["string", "null"]}},
    }


def _list_operation(key: str, item: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": LIST_PARAMETERS,
            "responses": {"200": _json(_listing(key, item), "a page"), **_errors(400, 403)},
        }
    }


def description() -> dict[str, Any]:
    """The whole OpenAPI document."""
    output = {
        "get": {
            "summary": "the raw bytes kept; follow=1 streams until the job ends",
            "parameters": [
                _ID,
                {"name": "stream", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": ["stdout", "stderr"]}},
                {"name": "follow", "in": "query", "schema": {"type": "integer", "enum": [0, 1]}},
            ],
            "responses": {
                "200": {"description": "output bytes",
                        "content": {"application/octet-stream": {},
                                    "text/event-stream": {}}},
                "206": {"description": "a byte range",
                        "content": {"application/octet-stream": {}}},
                **_errors(400, 404, 416),
            },
        }
    }  # fmt: skip
    paths: dict[str, Any] = {
        "/api/jobs": {
            "post": {
                "summary": "submit a job",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": SPEC}},
                },
                "responses": {
                    "202": _json(JOB, "accepted and durable; Location: its status"),
                    "200": _json(JOB, "Idempotency-Key replayed: the original job, final"),
                    **_errors(400, 403, 409, 413, 415, 422, 503),
                },
            },
            **_list_operation("jobs", JOB, "list jobs, newest first"),
        },
        "/api/jobs/{job_id}": {
            "get": {
                "summary": "a job",
                "parameters": [_ID, {"name": "fields", "in": "query",
                                     "schema": {"type": "string"}}],
                "responses": {"200": _json(JOB, "the job"), "304": {"description": "not modified"},
                              **_errors(400, 404)},
            },
            "patch": {
                "summary": 'cancel ({"status": "cancelled"}), or change environment, labels, '
                           "timeout or run_at of a job that has not started",
                "parameters": [_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"type": "object", "required": ["status"],
                         "properties": {"status": {"const": "cancelled"}},
                         "additionalProperties": False},
                        {"type": "object", "minProperties": 1, "additionalProperties": False,
                         "properties": {
                             "environment": {"oneOf": [_STRING_MAP, {"type": "null"}]},
                             "labels": {"oneOf": [_STRING_MAP, {"type": "null"}]},
                             "timeout": {"type": ["number", "null"], "exclusiveMinimum": 0},
                             "run_at": {"type": ["string", "null"], "format": "date-time"}}},
                    ]}}},
                },
                "responses": {"200": _json(JOB, "the job once final"),
                              **_errors(400, 404, 409, 413, 415)},
            },
            "delete": {
                "summary": "remove a finished job and its output",
                "parameters": [_ID],
                "responses": {"204": {"description": "deleted"}, **_errors(404, 409)},
            },
        },
        "/api/jobs/{job_id}/output": {
            "get": {
                "summary": "both streams live as Server-Sent Events (stdout, stderr; "
                           "each one's data is the text as a JSON string), "
                           "then an end event with the outcome",
                "parameters": [_ID],
                "responses": {"200": {"description": "an event stream",
                                      "content": {"text/event-stream": {}}},
                              **_errors(400, 404)},
            }
        },
        "/api/jobs/{job_id}/output/{stream}": output,
        "/api/jobs/{job_id}/deliveries": {
            "get": {
                "summary": "the job's webhook callbacks: pending, delivered or failed, "
                           "with their attempts",
                "parameters": [_ID],
                "responses": {"200": _json(DELIVERIES, "the callbacks"), **_errors(400, 404)},
            }
        },
        "/api/webhook-secret": {
            "get": {
                "summary": "your webhook signing secret (made on first use)",
                "responses": {"200": _json(WEBHOOK_SECRET, "the secret"), **_errors(503)},
            },
            "post": {
                "summary": "rotate your secret; the old one also signs for 24 h",
                "responses": {"200": _json(WEBHOOK_SECRET, "the new secret"),
                              **_errors(503)},
            },
        },
        "/api/statuses": _list_operation("statuses", STATUS, "list statuses"),
        "/api/statuses/{job_id}": {
            "get": {
                "summary": "a status; wait=S long-polls until done",
                "parameters": [_ID, {"name": "wait", "in": "query",
                                     "schema": {"type": "number", "minimum": 0, "maximum": 300}}],
                "responses": {
                    "200": _json(STATUS, "not done yet"),
                    "303": _json(STATUS, "done; Location: the result"),
                    "304": {"description": "not modified"},
                    **_errors(400, 404),
                },
            }
        },
        "/api/results": _list_operation("results", RESULT, "list finished jobs' results"),
        "/api/results/{job_id}": {
            "get": {
                "summary": "a finished job's result",
                "parameters": [_ID],
                "responses": {"200": _json(RESULT, "the result"),
                              "304": {"description": "not modified"}, **_errors(404)},
            },
            "delete": {
                "summary": "same as deleting the job",
                "parameters": [_ID],
                "responses": {"204": {"description": "deleted"}, **_errors(404, 409)},
            },
        },
        "/api/schedules": {
            "post": {
                "summary": "a recurring schedule: a job at each fire of a cron expression",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {**SCHEDULE_BODY, "required": ["cron", "job"]}}}},
                "responses": {"201": _json(SCHEDULE, "created; Location: the schedule"),
                              **_errors(400, 403, 413, 415, 503)},
            },
            "get": {
                "summary": "your schedules (an admin: all)",
                "responses": {"200": _json({"type": "object", "properties": {
                    "schedules": {"type": "array", "items": SCHEDULE}}}, "schedules"),
                    **_errors()},
            },
        },
        "/api/schedules/{schedule_id}": {
            "get": {"summary": "a schedule", "parameters": [_SID],
                    "responses": {"200": _json(SCHEDULE, "the schedule"), **_errors(404)}},
            "patch": {
                "summary": "change a schedule (a new cron, zone or unpause counts from now)",
                "parameters": [_SID],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": SCHEDULE_BODY}}},
                "responses": {"200": _json(SCHEDULE, "the schedule"),
                              **_errors(400, 403, 404, 413, 415, 503)},
            },
            "delete": {"summary": "remove a schedule (its jobs stay)", "parameters": [_SID],
                       "responses": {"204": {"description": "deleted"},
                                     **_errors(404, 503)}},
        },
        "/api/tokens": {
            "post": {
                "summary": "a new bearer token (HTTP Basic or a token)",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"expires_in": {"type": "number", "exclusiveMinimum": 0},
                                   "description": {"type": "string", "maxLength": 200},
                                   "user": {"type": "string", "description":
                                            "admins only: whose token it is"}}}}}},
                "responses": {"201": _json(TOKEN, "the token, shown once"),
                              **_errors(400, 403, 413, 415, 429)},
            },
            "get": {
                "summary": "your tokens (never the secrets)",
                "responses": {"200": _json({"type": "object", "properties": {
                    "tokens": {"type": "array", "items": TOKEN}}}, "tokens"), **_errors()},
            },
        },
        "/api/tokens/{token_id}": {
            "delete": {
                "summary": "revoke a token",
                "parameters": [{"name": "token_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"204": {"description": "revoked"}, **_errors(404)},
            }
        },
        "/api/openapi.json": {
            "get": {"summary": "this document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors()}}
        },
        "/healthz": {
            "get": {"summary": "liveness (no token needed)", "security": [],
                    "responses": {"200": _json({"type": "object"}, "ok")}}
        },
        "/readyz": {
            "get": {"summary": "readiness (no token needed): 503 with Retry-After while "
                               "starting, draining or while the journal refuses appends",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "ready"),
                                  "503": _json({"type": "object"},
                                               "starting, draining or unavailable (reason)")}}
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics (roles admin and metrics only)",
                    "responses": {"200": {"description": "text exposition format",
                                          "content": {"text/plain": {}}}, **_errors(403)}}
        },
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "cmdd", "version": __version__,
                 "description": "Run commands on a Linux host for HTTPS REST clients."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
        }},
        "security": [{"bearer": []}],
        "paths": paths,
    }  # fmt: skip
