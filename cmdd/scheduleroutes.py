"""The /api/schedules handlers: HTTP to L{ScheduleService} calls, schedules to JSON.

Owned and isolated like jobs: a user sees and changes only their own
schedules (another's is the same 404 as an unknown id); admins see all.
"""

from __future__ import annotations

import re

from twisted.web.iweb import IRequest

from cmdd.auth import Principal, RunAsPolicy, principal_of
from cmdd.errors import ClientError, not_found
from cmdd.schedule import Schedule, parse_schedule, schedule_json
from cmdd.schedules import ScheduleService
from cmdd.users import User
from cmdd.web import read_json, respond_json

_ID = re.compile(r"[1-9][0-9]{0,17}\Z")


class ScheduleRoutes:
    """What the API's schedule routes do."""

    def __init__(self, service: ScheduleService, run_as: RunAsPolicy) -> None:
        self._service = service
        self._run_as = run_as

    def _json(self, schedule: Schedule) -> dict[str, object]:
        jobs = self._service.last_jobs(schedule.id)
        return schedule_json(schedule, [(job.id, job.state.value) for job in jobs])

    def _mine(self, request: IRequest, text: str) -> tuple[Principal, Schedule]:
        if not _ID.match(text):
            raise not_found("schedule", repr(text))
        principal = principal_of(request)
        viewer = None if principal.is_admin else principal.name
        return principal, self._service.get(int(text), viewer)

    def _now(self) -> float:
        return self._service.clock.seconds()

    async def create(self, request: IRequest) -> bytes:
        """POST /api/schedules: 201 with Location."""
        principal = principal_of(request)
        fields = parse_schedule(read_json(request), self._now())
        if fields["job"].user is not None:
            self._run_as.check(principal, fields["job"].user)
        schedule = await self._service.create(fields, principal.name)
        location = f"/api/schedules/{schedule.id}"
        return respond_json(request, self._json(schedule), 201, {"Location": location})

    def listing(self, request: IRequest) -> bytes:
        """GET /api/schedules: your own (an admin: all)."""
        principal = principal_of(request)
        viewer = None if principal.is_admin else principal.name
        schedules = [self._json(s) for s in self._service.listing(viewer)]
        return respond_json(request, {"schedules": schedules})

    def get(self, request: IRequest, schedule_id: str) -> bytes:
        """GET /api/schedules/{id}."""
        _, schedule = self._mine(request, schedule_id)
        return respond_json(request, self._json(schedule))

    async def patch(self, request: IRequest, schedule_id: str) -> bytes:
        """PATCH /api/schedules/{id}: change fields, validated like a POST."""
        principal, before = self._mine(request, schedule_id)
        fields = parse_schedule(read_json(request), self._now(), before)
        job = fields.get("job")
        if job is not None and job.user is not None:
            self._run_as.check(principal, job.user)
        schedule = await self._service.update(before.id, fields)
        return respond_json(request, self._json(schedule))

    async def delete(self, request: IRequest, schedule_id: str) -> bytes:
        """DELETE /api/schedules/{id}: 204; the jobs it created stay."""
        principal, schedule = self._mine(request, schedule_id)
        await self._service.delete(schedule.id, principal.name)
        request.setResponseCode(204)
        return b""


def schedule_refusal(
    schedule: Schedule, users: dict[str, User], run_as: RunAsPolicy
) -> str | None:
    """Why a schedule's fire must not create its job now, if it must not:
    a schedule acts for its owner, who may have been removed (or removed and
    added again: a new generation), or lost the right to run as its user."""
    user = users.get(schedule.owner)
    if user is None:
        return f"its owner {schedule.owner} is no longer a user"
    if schedule.owner_generation is not None and user.generation != schedule.owner_generation:
        return f"its owner {schedule.owner} was removed and added again"
    if schedule.job.user is not None:
        try:
            run_as.check(Principal(user.name, user.role), schedule.job.user)
        except ClientError as e:
            return e.message
    return None
