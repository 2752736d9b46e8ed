"""The HTTP API: Klein routes, the JSON error model, representations.

Routes translate HTTP to manager calls and jobs to JSON; they hold no policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from cmdd import __version__
from cmdd.accounts import Accounts
from cmdd.auth import METRICS_READERS, RunAsPolicy, principal_of
from cmdd.errors import ClientError, not_found
from cmdd.follow import follow, parse_range
from cmdd.idempotency import KeyIndex, fingerprint, parse_key_header
from cmdd.jobpatch import parse_patch, patched_spec
from cmdd.jobs import Idempotency, Job
from cmdd.lifecycle import DRAINING, READY, Readiness
from cmdd.manager import JobManager
from cmdd.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from cmdd.metrics import DaemonMetrics
from cmdd.openapi import description
from cmdd.query import JobQuery, PointInTime, parse_number, parse_query, run_query, scans, trim
from cmdd.representations import (
    JOB_FIELDS,
    RESULT_FIELDS,
    STATUS_FIELDS,
    job_json,
    result_json,
    status_json,
    token_json,
)
from cmdd.results import stream_raw, stream_result
from cmdd.scheduleroutes import ScheduleRoutes
from cmdd.schedules import ScheduleService
from cmdd.spec import parse_spec
from cmdd.spool import STREAMS, output_path, output_size, read_output
from cmdd.tokenrequest import TokenRequest, parse_token_request
from cmdd.web import read_json, respond_json, wants_event_stream
from cmdd.webhookapi import WebhookRoutes

log = Logger()

#: Runs a blocking function on a worker thread (C{deferToThread} in the daemon).
BlockingRunner = Callable[..., Deferred[Any]]

NO_RUN_AS = RunAsPolicy()
#: Longest ?wait on a status: long enough to save polling, short enough for proxies.
MAX_WAIT = 300.0
_JOB_ID = re.compile(r"[1-9][0-9]{0,17}\Z")


def _has_body(request: IRequest) -> bool:
    content = request.content
    if content is None:
        return False
    position = content.tell()
    has = bool(content.read(1))
    content.seek(position)
    return has


def parse_job_id(text: str) -> int:
    """A job id from a URL segment; anything else is an unknown job."""
    if not _JOB_ID.match(text):
        raise not_found("job", repr(text))
    return int(text)


def _query(request: IRequest, allowed: frozenset[str]) -> dict[str, str]:
    args: dict[bytes, list[bytes]] = request.args or {}
    out: dict[str, str] = {}
    for raw_name, values in args.items():
        name = raw_name.decode("utf-8", "replace")
        if name not in allowed:
            raise ClientError("UNKNOWN_PARAMETER", f"unknown query parameter {name!r}", field=name)
        if len(values) != 1:
            raise ClientError("INVALID_PARAMETER", f"{name} may be given once", field=name)
        out[name] = values[0].decode("utf-8", "replace")
    return out


def _fields(request: IRequest, allowed: frozenset[str]) -> tuple[str, ...] | None:
    """The C{fields} parameter (the only one a single object takes)."""
    params = _query(request, frozenset({"fields"}))
    if "fields" not in params:
        return None
    return parse_query({"fields": [params["fields"]]}, allowed).fields


def _seconds(params: dict[str, str], name: str, maximum: float) -> float:
    seconds = parse_number(params[name])
    if seconds is None or not 0 <= seconds <= maximum:
        raise ClientError(
            "INVALID_PARAMETER", f"{name} must be seconds from 0 to {maximum:.0f}", field=name
        )
    return seconds


class CmddAPI:
    """The routes of the cmdd HTTP API."""

    app = Klein()

    def __init__(
        self,
        manager: JobManager,
        run_blocking: BlockingRunner,
        accounts: Accounts,
        run_as: RunAsPolicy = NO_RUN_AS,
        readiness: Readiness | None = None,
        metrics: DaemonMetrics | None = None,
        webhooks: WebhookRoutes | None = None,
        schedules: ScheduleService | None = None,
    ) -> None:
        self._manager = manager
        self._schedules = ScheduleRoutes(
            schedules or ScheduleService(manager, manager.clock), run_as
        )
        self._run_blocking = run_blocking
        self._accounts = accounts
        self._run_as = run_as
        if readiness is None:
            # Without a composition root saying otherwise (tests): ready.
            readiness = Readiness()
            readiness.ready()
        self._readiness = readiness
        #: Idempotency-Key → job; fed by the store, so replay rebuilds it.
        self.idempotency_keys = KeyIndex()
        manager.store.add_listener(self.idempotency_keys.job_changed)
        if metrics is None:
            metrics = DaemonMetrics(manager.store, manager)
            metrics.watch()
        self._metrics = metrics
        self._webhooks = webhooks or WebhookRoutes(None, None)

    def _job(self, request: IRequest, job_id: str) -> Job:
        """The job, if the caller may see it; otherwise the same 404 as an unknown id
        (so other users' job ids do not leak)."""
        job = self._manager.get(parse_job_id(job_id))
        if not principal_of(request).may_see(job.owner):
            raise not_found("job", job.id)
        return job

    # --- errors ----------------------------------------------------------

    @app.handle_errors(ClientError)
    def client_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ClientError)
        return respond_json(request, error.to_json(), error.status, error.headers)

    @app.handle_errors(NotFound)
    def no_route(self, request: IRequest, failure: Failure) -> bytes:
        error = ClientError("ROUTE_NOT_FOUND", "no such resource", status=404)
        return respond_json(request, error.to_json(), 404)

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        error_value = failure.value
        assert isinstance(error_value, MethodNotAllowed)
        allowed = sorted(error_value.valid_methods or [])
        method = request.method.decode("ascii", "replace")
        error = ClientError(
            "METHOD_NOT_ALLOWED",
            f"{method} is not allowed here; use {', '.join(allowed)}",
            status=405,
        )
        return respond_json(request, error.to_json(), 405, {"Allow": ", ".join(allowed)})

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        http_error = failure.value
        if isinstance(http_error, RequestRedirect):
            # werkzeug's canonical URL (merged slashes): a relative Location,
            # never one built from the client's Host header.
            # Klein binds without the query; keep the client's (ASCII: Twisted
            # accepts no other request target).
            _, _, query = request.uri.partition(b"?")
            location = urlsplit(http_error.new_url).path
            if query:
                location += "?" + query.decode("ascii")
            code = http_error.code
            error = ClientError(
                "PERMANENT_REDIRECT", f"the canonical URL is {location}", status=code
            )
            return respond_json(request, error.to_json(), code, {"Location": location})
        if isinstance(http_error, HTTPException):
            # Routing answers such as a redirect to the canonical URL.
            code = http_error.code or 500
            headers = {
                name: value
                for name, value in http_error.get_headers()
                if name.lower() != "content-type"
            }
            error = ClientError("HTTP_" + str(code), http_error.description or "", status=code)
            return respond_json(request, error.to_json(), code, headers)
        log.failure(
            "unexpected error in {method} {uri}", failure, method=request.method, uri=request.uri
        )
        error = ClientError("INTERNAL_ERROR", "the server failed; see its log", status=500)
        return respond_json(request, error.to_json(), 500)

    # --- jobs ------------------------------------------------------------

    @app.route("/api/jobs", methods=["POST"])
    async def submit(self, request: IRequest) -> bytes:
        principal = principal_of(request)
        spec = parse_spec(read_json(request), now=self._manager.clock.seconds())
        if spec.user is not None:
            self._run_as.check(principal, spec.user)
        key = parse_key_header(request.requestHeaders.getRawHeaders(b"idempotency-key"))
        if key is None:
            job = await self._manager.submit(spec, owner=principal.name)
            return _accepted(request, job)
        tag = Idempotency(key, fingerprint(spec.to_json()))
        keys, manager = self.idempotency_keys, self._manager
        earlier = keys.claim(
            principal.name, tag, manager.clock.seconds(), lambda i: manager.store.get(i) is not None
        )
        if earlier is not None:
            return _accepted(request, manager.get(earlier), replayed=True)
        try:
            job = await manager.submit(spec, owner=principal.name, idempotency=tag)
        except ClientError:
            # Refused (a full queue, a full disk): the key stays free.
            keys.release(principal.name, key)
            raise
        return _accepted(request, job)

    @app.route("/api/jobs", methods=["GET"])
    def list_jobs(self, request: IRequest) -> bytes | Deferred[bytes]:
        return self._list(request, "jobs", job_json, JOB_FIELDS)

    @app.route("/api/jobs/<job_id>", methods=["GET"])
    def get_job(self, request: IRequest, job_id: str) -> bytes:
        fields = _fields(request, JOB_FIELDS)
        found = self._job(request, job_id)
        shown = job_json(found)
        live = getattr(self._manager.executor, "slurm_state", None)
        state = None if live is None or found.state.final else live(found.id)
        if state is not None:
            # Where the cluster has it now (PENDING: waiting in Slurm's queue).
            shown["slurm_state"] = state
        return respond_json(request, trim(shown, fields), etag=True)

    @app.route("/api/jobs/<job_id>", methods=["PATCH"])
    async def patch_job(self, request: IRequest, job_id: str) -> bytes:
        job = self._job(request, job_id)
        changes = parse_patch(read_json(request))
        if changes is None:
            job = await self._manager.cancel(job.id, by=principal_of(request).name)
        else:
            spec = patched_spec(job.spec, changes, self._manager.clock.seconds())
            job = await self._manager.modify(job.id, spec)
        return respond_json(request, job_json(job))

    @app.route("/api/jobs/<job_id>", methods=["DELETE"])
    @app.route("/api/results/<job_id>", methods=["DELETE"])
    async def delete_job(self, request: IRequest, job_id: str) -> bytes:
        job = self._job(request, job_id)
        await self._manager.delete(job.id, by=principal_of(request).name)
        request.setResponseCode(204)
        return b""

    @app.route("/api/jobs/<job_id>/output", methods=["GET"])
    async def follow_output(self, request: IRequest, job_id: str) -> bytes:
        """Both streams and the end, as Server-Sent Events on one connection."""
        _query(request, frozenset())
        job = self._job(request, job_id)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        return await follow(
            request,
            [(name, output_path(self._manager.output_dir, job.id, name)) for name in STREAMS],
            job.id,
            current=self._manager.store.get,
            changed=self._manager.output_changed,
            run_blocking=self._run_blocking,
            sse=True,
            clock=self._manager.clock,
        )
    @app.route("/api/jobs/<job_id>/deliveries", methods=["GET"])
    def get_deliveries(self, request: IRequest, job_id: str) -> bytes:
        _query(request, frozenset())
        return self._webhooks.deliveries(request, self._job(request, job_id))

    @app.route("/api/webhook-secret", methods=["GET"])
    async def get_webhook_secret(self, request: IRequest) -> bytes:
        return await self._webhooks.get_secret(request)

    @app.route("/api/webhook-secret", methods=["POST"])
    async def rotate_webhook_secret(self, request: IRequest) -> bytes:
        return await self._webhooks.rotate_secret(request)

    @app.route("/api/jobs/<job_id>/output/<stream>", methods=["GET"])
    async def get_output(self, request: IRequest, job_id: str, stream: str) -> bytes:
        params = _query(request, frozenset({"follow"}))
        job = self._job(request, job_id)
        if stream not in STREAMS:
            raise ClientError("STREAM_NOT_FOUND", "the streams are stdout and stderr", status=404)
        path = output_path(self._manager.output_dir, job.id, stream)
        sse = wants_event_stream(request.getHeader("accept"))
        if params.get("follow", "0") not in ("0", "1"):
            raise ClientError("INVALID_PARAMETER", "follow must be 0 or 1", field="follow")
        if sse or params.get("follow") == "1":
            if sse:
                request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
                request.setHeader(b"cache-control", b"no-cache")
            else:
                request.setHeader(b"content-type", b"application/octet-stream")
            return await follow(
                request,
                [(stream, path)],
                job.id,
                current=self._manager.store.get,
                changed=self._manager.output_changed,
                run_blocking=self._run_blocking,
                sse=sse,
                clock=self._manager.clock,
            )
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"accept-ranges", b"bytes")
        wanted = request.getHeader("range")
        size: int = await self._run_blocking(output_size, path)
        if wanted is None:
            request.setHeader(b"content-length", b"%d" % size)
            return await stream_raw(request, path, size, self._run_blocking)
        first, last = parse_range(wanted, size)
        data: bytes = await self._run_blocking(read_output, path, first, last - first + 1)
        request.setResponseCode(206)
        request.setHeader(b"content-range", f"bytes {first}-{last}/{size}".encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(data))
        return data

    # --- statuses --------------------------------------------------------

    @app.route("/api/statuses", methods=["GET"])
    def list_statuses(self, request: IRequest) -> bytes | Deferred[bytes]:
        return self._list(request, "statuses", status_json, STATUS_FIELDS)

    @app.route("/api/statuses/<job_id>", methods=["GET"])
    async def get_status(self, request: IRequest, job_id: str) -> bytes:
        params = _query(request, frozenset({"wait"}))
        seconds = _seconds(params, "wait", MAX_WAIT) if "wait" in params else None
        job = self._job(request, job_id)
        if seconds is not None and not job.state.final:
            job = await self._manager.wait_final(job.id, seconds)
        if job.state.final:
            return respond_json(
                request, status_json(job), 303, {"Location": f"/api/results/{job.id}"}
            )
        return respond_json(request, status_json(job), etag=True)

    # --- results ---------------------------------------------------------

    @app.route("/api/results", methods=["GET"])
    def list_results(self, request: IRequest) -> bytes | Deferred[bytes]:
        return self._list(request, "results", result_json, RESULT_FIELDS, final_only=True)

    @app.route("/api/results/<job_id>", methods=["GET"])
    async def get_result(self, request: IRequest, job_id: str) -> bytes:
        fields = _fields(request, RESULT_FIELDS | {"stdout", "stderr"})
        job = self._job(request, job_id)
        if not job.state.final or job.outcome is None:
            raise ClientError(
                "RESULT_NOT_READY",
                f"job {job.id} is {job.state.value}; its result is not ready",
                status=404,
                headers={"Retry-After": "1"},
            )
        # Streamed from the files: memory per response is one chunk, however
        # big the output (see cmdd.results).
        head = result_json(job)
        wanted = [("stdout", job.outcome.stdout_bytes), ("stderr", job.outcome.stderr_bytes)]
        if fields is not None:
            head = trim(head, fields)
            wanted = [(name, size) for name, size in wanted if name in fields]
        streams = [
            (name, output_path(self._manager.output_dir, job.id, name), size)
            for name, size in wanted
        ]
        return await stream_result(request, head, streams, self._run_blocking)

    # --- tokens ----------------------------------------------------------

    # --- schedules (handlers in cmdd/scheduleroutes.py) ---------------------

    @app.route("/api/schedules", methods=["POST"])
    async def create_schedule(self, request: IRequest) -> bytes:
        return await self._schedules.create(request)

    @app.route("/api/schedules", methods=["GET"])
    def list_schedules(self, request: IRequest) -> bytes:
        return self._schedules.listing(request)

    @app.route("/api/schedules/<schedule_id>", methods=["GET"])
    def get_schedule(self, request: IRequest, schedule_id: str) -> bytes:
        return self._schedules.get(request, schedule_id)

    @app.route("/api/schedules/<schedule_id>", methods=["PATCH"])
    async def patch_schedule(self, request: IRequest, schedule_id: str) -> bytes:
        return await self._schedules.patch(request, schedule_id)

    @app.route("/api/schedules/<schedule_id>", methods=["DELETE"])
    async def delete_schedule(self, request: IRequest, schedule_id: str) -> bytes:
        return await self._schedules.delete(request, schedule_id)

    @app.route("/api/tokens", methods=["POST"])
    async def create_token(self, request: IRequest) -> bytes:
        principal = principal_of(request)
        wanted = TokenRequest()
        if request.getHeader("content-type") or _has_body(request):
            wanted = parse_token_request(read_json(request))
        owner, parent = principal.name, principal.token_id
        if wanted.user is not None and wanted.user != principal.name:
            # An admin's token for someone else (a Prometheus scraper, a CI
            # runner) belongs to them alone: not bound to the admin's token.
            if not principal.is_admin:
                raise ClientError(
                    "FORBIDDEN", "only an admin creates tokens for other users", status=403
                )
            if wanted.user not in self._accounts.users():
                raise ClientError(
                    "UNKNOWN_USER", f"no user {wanted.user!r}", field="user", status=400
                )
            owner, parent = wanted.user, None
        # Otherwise a token made with a token is its child: it never outlives
        # the parent's expiry and is revoked with it.
        token, secret = await self._accounts.issue_token(
            owner, wanted.expires_in, wanted.description, parent=parent
        )
        body = {**token_json(token), "token": secret}
        headers = {"Location": f"/api/tokens/{token.id}", "Cache-Control": "no-store"}
        return respond_json(request, body, 201, headers)

    @app.route("/api/tokens", methods=["GET"])
    def list_tokens(self, request: IRequest) -> bytes:
        principal = principal_of(request)
        tokens = self._accounts.book.owned_by(principal.name)
        return respond_json(request, {"tokens": [token_json(t) for t in tokens]})

    @app.route("/api/tokens/<token_id>", methods=["DELETE"])
    async def revoke_token(self, request: IRequest, token_id: str) -> bytes:
        principal = principal_of(request)
        token = self._accounts.book.get(token_id)
        if token is None or not principal.may_see(token.owner):
            raise ClientError("TOKEN_NOT_FOUND", f"no token with id {token_id!r}", status=404)
        await self._accounts.revoke_token(token.id)
        request.setResponseCode(204)
        return b""

    # --- operations ------------------------------------------------------

    @app.route("/api/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return respond_json(request, description())

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        return respond_json(
            request,
            {
                "status": "ok",
                "version": __version__,
                "running": self._manager.running_count,
                "queued": self._manager.queued_count,
            },
        )

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        state = self._readiness.state
        problem = self._readiness.problem()
        if self._readiness.is_ready and not self._manager.stopping and problem is None:
            return respond_json(request, {"status": "ready"})
        body: dict[str, str] = {"status": state}
        if state == READY and self._manager.stopping:
            body = {"status": DRAINING}
        elif state == READY and problem is not None:
            body = {"status": "unavailable", "reason": problem}
        return respond_json(
            request,
            body,
            503,
            {"Retry-After": "5", "Cache-Control": "no-store"},
        )

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        principal = principal_of(request)
        if principal.role not in METRICS_READERS:
            # The counts cover every user's jobs: not for everyone.
            raise ClientError(
                "FORBIDDEN", "only admins and the metrics role may read /metrics", status=403
            )
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE.encode("ascii"))
        return self._metrics.exposition()

    # --- shared ----------------------------------------------------------

    def _list(
        self,
        request: IRequest,
        key: str,
        represent: Callable[[Job], dict[str, Any]],
        fields: frozenset[str],
        final_only: bool = False,
    ) -> bytes | Deferred[bytes]:
        query = parse_query(_args(request), fields, final_only=final_only)
        principal = principal_of(request)
        if query.owner is not None and not principal.may_see(query.owner):
            raise ClientError(
                "FORBIDDEN", "only admins may list other users' jobs", status=403, field="owner"
            )
        if not principal.is_admin:
            query = attrs.evolve(query, owner=principal.name)
        if scans(query):
            # Walking a million jobs takes seconds: on a thread, over a copy
            # of the ids taken now, so the reactor serves everyone meanwhile.
            view = PointInTime(self._manager.store, query)
            found: Deferred[tuple[list[Job], str | None]] = self._run_blocking(
                run_query, query, view
            )
            return found.addCallback(
                lambda page: self._page(request, key, represent, query, *page)
            )
        jobs, cursor = run_query(query, self._manager.store)
        return self._page(request, key, represent, query, jobs, cursor)

    def _page(
        self,
        request: IRequest,
        key: str,
        represent: Callable[[Job], dict[str, Any]],
        query: JobQuery,
        jobs: list[Job],
        cursor: str | None,
    ) -> bytes:
        body: dict[str, Any] = {
            key: [trim(represent(job), query.fields) for job in jobs],
            "next": None,
        }
        headers = {}
        if cursor is not None:
            args = [(k, v) for k, vs in _args(request).items() for v in vs if k != "cursor"]
            next_url = f"/api/{key}?" + urlencode([*args, ("cursor", cursor)])
            body["next"] = next_url
            headers["Link"] = f'<{next_url}>; rel="next"'
        return respond_json(request, body, 200, headers)


def _accepted(request: IRequest, job: Job, replayed: bool = False) -> bytes:
    """The answer to a POST of a job: 202 while it is not final (a replayed
    Idempotency-Key of a finished job: 200)."""
    headers = {"Location": f"/api/statuses/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if job.state.final:
        return respond_json(request, job_json(job), 200, headers)
    headers["Retry-After"] = "1"
    return respond_json(request, job_json(job), 202, headers)


def _args(request: IRequest) -> dict[str, list[str]]:
    raw: dict[bytes, list[bytes]] = request.args or {}
    return {
        name.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in values]
        for name, values in raw.items()
    }
