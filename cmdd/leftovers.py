"""Processes of jobs that outlived a crashed daemon, found and ended at start.

The job spawner ends every job when the daemon dies. The one case it cannot
cover: without a sandbox, when the spawner dies at the same moment (both
killed with C{-9}), each job's first process dies with it
(C{PR_SET_PDEATHSIG}), but what that process started is re-parented to init
and keeps running. Every job carries C{CMDD_RUN=<instance>:<job id>} in its
environment (after the client's variables, so a job cannot change it, and
inherited by everything it starts, in any session); at start-up, before the
jobs recorded as running are marked lost, the processes whose initial
environment holds that marker for one of those jobs are killed.

Pid reuse cannot fool it: each process is opened as a pidfd, its
environment is read (again) through C{/proc} while the pidfd pins that very
process, and only then is it signalled through the pidfd.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Collection

MARKER = "CMDD_RUN"


def instance_of(data_dir: str) -> str:
    """A short name for the daemon of C{data_dir} (one per data directory,
    which its lock makes exclusive)."""
    return hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:16]


def marker_value(instance: str, job_id: int) -> str:
    """The value of L{MARKER} in job C{job_id}'s environment."""
    return f"{instance}:{job_id}"


def _marked_job(pid: int, instance: str) -> int | None:
    """The job id in process C{pid}'s marker, if it is one of C{instance}'s."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            data = environ.read()
    except OSError:
        return None
    prefix = f"{MARKER}={instance}:".encode()
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            try:
                return int(item[len(prefix) :])
            except ValueError:
                return None
    return None


def end_leftovers(instance: str, job_ids: Collection[int]) -> dict[int, list[int]]:
    """SIGKILL every process marked as one of C{job_ids} of C{instance}.

    @return: the pids killed, per job.
    """
    killed: dict[int, list[int]] = {}
    if not job_ids:
        return killed
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        if _marked_job(pid, instance) not in job_ids:
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone meanwhile
        try:
            # The pidfd pins this process: if /proc/PID still shows the
            # marker, PID is still the process we matched, not a reuse.
            job_id = _marked_job(pid, instance)
            if job_id is not None and job_id in job_ids:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed.setdefault(job_id, []).append(pid)
        except OSError:
            pass
        finally:
            os.close(pidfd)
    return killed
