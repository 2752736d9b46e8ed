"""Scheduled jobs: released into the queue when their C{run_at} comes.

One timer for all of them (L{cmdd.alarm.Alarm} over a L{Timetable}), kept
in step with the store by listening to its events, so it needs no hook in
the manager besides L{JobManager.release}. Replay feeds the same listener,
so after a restart every scheduled job is armed again, and those whose time
passed while the daemon was down are released at once.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.alarm import Alarm
from cmdd.jobs import Event, Job, State
from cmdd.manager import JobManager
from cmdd.timetable import Timetable

log = Logger()

#: Releases per reactor turn: 10,000 due at start do not stall requests.
BATCH = 500
#: Seconds before a release the journal refused is tried again.
RETRY_SECONDS = 5.0


class RunAtService(Service):
    """Releases each scheduled job at its C{run_at}."""

    name = "run_at"

    def __init__(self, manager: JobManager, clock: IReactorTime) -> None:
        self._manager = manager
        self._clock = clock
        self.table = Timetable()
        self._alarm = Alarm(clock, self._due)
        for job in manager.store.oldest_first():
            self._job_changed(None, job)
        manager.store.add_listener(self._job_changed)

    def startService(self) -> None:
        super().startService()
        self._rearm()

    def stopService(self) -> None:
        super().stopService()
        self._alarm.disarm()

    def _job_changed(self, event: Event | None, job: Job | None) -> None:
        if job is not None and job.state is State.SCHEDULED:
            assert job.spec.run_at is not None
            self.table.set(job.id, job.spec.run_at)
        elif event is not None:
            self.table.discard(event.job_id)
        else:
            return
        self._rearm()

    def _rearm(self) -> None:
        if self.running:
            self._alarm.arm(self.table.earliest())

    def _due(self) -> None:
        for job_id in self.table.pop_due(self._clock.seconds(), BATCH):
            self._manager.release(job_id).addErrback(self._refused, job_id)
        self._rearm()

    def _refused(self, failure: Failure, job_id: int) -> None:
        log.warn(
            "job {job_id} stays scheduled: its release could not be journaled ({why})",
            job_id=job_id,
            why=failure.getErrorMessage(),
        )
        job = self._manager.history.current(job_id)
        if job is not None and job.state is State.SCHEDULED:
            self.table.set(job_id, self._clock.seconds() + RETRY_SECONDS)
            self._rearm()
