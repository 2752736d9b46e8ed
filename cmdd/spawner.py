"""The job spawner: a small process, started once, that forks every job.

The daemon never spawns a job itself. It starts this program once (as root
when it runs as root, inside a bubblewrap sandbox when one is available)
and sends it one message per job over a Unix socket, with the job's three
pipe ends attached (SCM_RIGHTS). The spawner forks the job with the job's
own identity, session, working directory, umask and environment, so none of
that ever touches the daemon's process-wide state, and the client's
environment applies only to the final exec, after the identity switch.

Every job's first process is made a child subreaper, so whatever it leaves
behind while it runs stays below it; once it exits, its leftovers are
re-parented to the spawner (itself a subreaper), which kills every child it
did not start: a job's processes never outlive it, whatever session or
process group they moved to.

Run as C{python3 -I -S spawner.py [--allow-root]} with the control socket on
fd 3. Standard library only, and nothing from cmdd: it runs in the sandbox,
possibly where cmdd's installation is not readable.

Wire format, both ways: frames of a 4-byte big-endian length and a JSON
object (Twisted's C{Int32StringReceiver}). The daemon sends
C{{"op": "spawn", "job", "argv", "env", "cwd", "umask", "uid", "gid",
"groups"}} (three descriptors attached to the frame's first bytes) and
C{{"op": "signal", "job", "signal"}}; the spawner answers C{{"op":
"started", "job", "pid"}}, C{{"op": "refused", "job", "error"}} and
C{{"op": "exited", "job", "code", "signal"}}.
"""

from __future__ import annotations

import array
import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
from typing import Any

CONTROL_FD = 3
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_MAX_FRAME = 16 * 1024 * 1024
_MAX_FDS = 3

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class Spawner:
    """The spawner's state: live jobs by id and pid, and the control socket."""

    def __init__(self, control: socket.socket, allow_root: bool) -> None:
        self.control = control
        self.allow_root = allow_root
        self.jobs: dict[int, subprocess.Popen[bytes]] = {}
        self.job_of_pid: dict[int, int] = {}
        self._inbox = bytearray()
        self._fds: list[int] = []

    # --- messages ----------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Send one frame to the daemon (blocking: the daemon always reads)."""
        body = json.dumps(message).encode()
        self.control.sendall(struct.pack(">I", len(body)) + body)

    def receive(self) -> bool:
        """Read what the daemon sent; handle complete frames. False at EOF."""
        fds = array.array("i")
        data, ancillary, _, _ = self.control.recvmsg(
            65536, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize)
        )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        self._fds.extend(fds)
        if not data:
            return False
        self._inbox += data
        while len(self._inbox) >= 4:
            (length,) = struct.unpack(">I", self._inbox[:4])
            if length > _MAX_FRAME:
                raise SystemExit("cmdd-spawner: oversized frame from the daemon")
            if len(self._inbox) < 4 + length:
                break
            frame = bytes(self._inbox[4 : 4 + length])
            del self._inbox[: 4 + length]
            self.handle(json.loads(frame))
        return True

    def handle(self, message: dict[str, Any]) -> None:
        """Carry out one request of the daemon."""
        if message["op"] == "spawn":
            fds, self._fds = self._fds[:_MAX_FDS], self._fds[_MAX_FDS:]
            try:
                self.spawn(message, fds)
            finally:
                for fd in fds:
                    os.close(fd)
        elif message["op"] == "signal":
            self.signal(int(message["job"]), int(message["signal"]))

    # --- jobs --------------------------------------------------------------

    def spawn(self, request: dict[str, Any], fds: list[int]) -> None:
        """Start one job; answer C{started} or C{refused}."""
        job_id = int(request["job"])
        argv: list[str] = request["argv"]
        uid = request.get("uid")
        if len(fds) != _MAX_FDS:
            self.send({"op": "refused", "job": job_id, "error": "the job's pipes were lost"})
            return
        if uid == 0 and os.geteuid() == 0 and not self.allow_root:
            self.send({"op": "refused", "job": job_id, "error": "jobs may not run as root"})
            return
        cwd = request["cwd"]
        error = _directory_error(cwd)
        if error is not None:
            self.send({"op": "refused", "job": job_id, "error": error})
            return
        switch = uid is not None and uid != os.geteuid()
        try:
            process = subprocess.Popen(
                argv,
                stdin=fds[0],
                stdout=fds[1],
                stderr=fds[2],
                env=request["env"],
                umask=int(request["umask"]),
                start_new_session=True,
                close_fds=True,
                user=uid if switch else None,
                group=request.get("gid") if switch else None,
                extra_groups=request.get("groups") if switch else None,
                preexec_fn=_enter_job(cwd),
            )
        except subprocess.SubprocessError:
            error = f"working directory {cwd}: Permission denied"
        except OSError as e:
            error = _exec_error(argv[0], request["env"], e)
        else:
            self.jobs[job_id] = process
            self.job_of_pid[process.pid] = job_id
            self.send({"op": "started", "job": job_id, "pid": process.pid})
            return
        self.send({"op": "refused", "job": job_id, "error": error})

    def signal(self, job_id: int, signum: int) -> None:
        """Signal a live job's process group (its first process leads it)."""
        process = self.jobs.get(job_id)
        if process is None:
            return  # already reaped: its pid may belong to someone else now
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        """Collect every ended child; report jobs; kill what jobs left behind."""
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            job_id = self.job_of_pid.pop(pid, None)
            if job_id is None:
                continue  # a leftover of an ended job
            process = self.jobs.pop(job_id)
            process.returncode = os.waitstatus_to_exitcode(status)
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            self.send({"op": "exited", "job": job_id, "code": code, "signal": signum})
        if reaped:
            self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL every child that is not a live job's first process.

        While a job's first process runs it is the subreaper of everything
        it starts; only once it exits do its leftovers become ours.
        """
        for pid in _children():
            if pid not in self.job_of_pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def kill_everything(self) -> None:
        """The daemon went away: end every job and everything they started."""
        for process in self.jobs.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _enter_job(cwd: str) -> Any:
    """What runs in the job's child after the identity switch, before exec."""

    def enter() -> None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        # Set after the identity switch, which would clear it.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # Entered again as the job's own user: permission is checked for it.
        os.chdir(cwd)

    return enter


def _directory_error(cwd: str) -> str | None:
    try:
        mode = os.stat(cwd).st_mode
    except OSError as e:
        return f"working directory {cwd}: {e.strerror}"
    if not stat.S_ISDIR(mode):
        return f"working directory {cwd}: Not a directory"
    return None


def _exec_error(program: str, env: dict[str, str], e: OSError) -> str:
    if e.errno == errno.ENOENT:
        found = program if "/" in program else None
        if found is None:
            for directory in env.get("PATH", os.defpath).split(":"):
                candidate = os.path.join(directory or ".", program)
                if os.path.exists(candidate):
                    found = candidate
                    break
        if found is not None and os.path.exists(found):
            return f"{found}: its interpreter was not found"
        return f"{program}: executable not found"
    return f"{program}: {e.strerror}"


def _children_listing() -> str:
    pid = os.getpid()
    path = f"/proc/{pid}/task/{pid}/children"
    if not os.path.exists(path):
        raise SystemExit(f"cmdd-spawner: {path} is missing (kernel without CONFIG_PROC_CHILDREN)")
    return path


def _children() -> list[int]:
    try:
        with open(_children_listing(), "rb") as listing:
            return [int(p) for p in listing.read().split()]
    except OSError:
        return []


def main(argv: list[str]) -> int:
    """Serve the daemon on fd 3 until it closes the socket."""
    allow_root = "--allow-root" in argv
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    # Jobs running as our uid (an unprivileged daemon) must not ptrace us.
    _prctl(_PR_SET_DUMPABLE, 0)
    # No parent-death signal for us: when the daemon dies its end of the
    # socket closes, and we end every job before exiting (a SIGKILL would
    # leave their children behind).
    if "--check" in argv:
        # Start-up check of the daemon: we could start, and can see our children.
        _children_listing()
        return 0
    control = socket.socket(fileno=CONTROL_FD)
    control.setblocking(True)
    spawner = Spawner(control, allow_root)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    # Handlers, not SIG_IGN: an ignored signal would stay ignored in every job,
    # while a handler is reset by exec. The daemon, not a signal, stops us.
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    try:
        while True:
            ready = selector.select(timeout=1.0)
            if not ready:
                spawner.kill_leftovers()  # a backstop; a job's exit does it at once
            for key, _ in ready:
                if key.data == "control" and not spawner.receive():
                    return 0
                if key.data == "child":
                    try:
                        while os.read(wake_read, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    spawner.reap()
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        spawner.kill_everything()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
