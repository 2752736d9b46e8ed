"""The job spawner: a small process, started once, that forks every job.

The daemon never spawns a job itself. It starts this program once (as root
when it runs as root, inside a bubblewrap sandbox when one is available)
and sends it one message per job over a Unix socket, with the job's three
pipe ends attached (SCM_RIGHTS). The spawner forks the job (a plain
C{os.fork}: this process is small, so that is cheap, and its exec runs in the
child on another core) with the job's own identity, session, working
directory, umask and environment, so none of that ever touches the daemon's
process-wide state, and the client's environment applies only to the final
exec, after the identity switch.

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
import contextlib
import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

CONTROL_FD = 3
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_MAX_FRAME = 16 * 1024 * 1024
_MAX_FDS = 3
#: Signals the daemon sends jobs; the spawner itself only notes them.
_JOB_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: Longest client-chosen name echoed in an answer.
_NAME_CHARS = 200
_KILL_ROUNDS = 20
#: Most processes looked at in one kill (a job's pid limit bounds it anyway).
_MAX_TREE = 100_000
_KILL_EVERYTHING_SECONDS = 5.0
#: Descriptors above this are not expected; closerange is one syscall anyway.
_MAX_FD = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class Spawner:
    """The spawner's state: live jobs by id and pid, and the control socket.

    A job is forked at once and its exec finishes in the child, on another
    core; the child reports a failure before exec through a close-on-exec
    pipe, whose silent end means the exec worked. Answers for one job always
    come in order: C{started} or C{refused}, then C{exited}.
    """

    def __init__(
        self, control: socket.socket, selector: selectors.BaseSelector, allow_root: bool
    ) -> None:
        self.control = control
        self.selector = selector
        self.allow_root = allow_root
        #: Live jobs: id -> pid of the job's first process (its group leader).
        self.jobs: dict[int, int] = {}
        self.job_of_pid: dict[int, int] = {}
        #: Forked jobs whose exec has not reported yet: id -> (pipe, request).
        self.execing: dict[int, tuple[int, dict[str, Any]]] = {}
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
        data, ancillary, flags, _ = self.control.recvmsg(
            65536, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if flags & socket.MSG_CTRUNC:
            # Descriptors were dropped (we are out of them): which job's pipe
            # is which can no longer be told, so start afresh rather than
            # hand one job another's pipes.
            raise SystemExit("cmdd-spawner: descriptors from the daemon were dropped")
        # Pipes come in order, each job's before the end of its request.
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
        """Fork one job; its exec report comes later (L{exec_reported})."""
        job_id = int(request["job"])
        uid = request.get("uid")
        if len(fds) != _MAX_FDS:
            self.send({"op": "refused", "job": job_id, "error": "the job's pipes were lost"})
            return
        if uid == 0 and os.geteuid() == 0 and not self.allow_root:
            self.send({"op": "refused", "job": job_id, "error": "jobs may not run as root"})
            return
        try:
            report_read, report_write = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            self.send({"op": "refused", "job": job_id, "error": f"no pipe: {e.strerror}"})
            return
        # Blocked across the fork: a cancel that reaches the child before it
        # has reset our no-op handlers stays pending until it has.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _JOB_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:  # out of processes or memory (a job can cause it)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            os.close(report_read)
            os.close(report_write)
            self.send({"op": "refused", "job": job_id, "error": f"cannot fork: {e.strerror}"})
            return
        if pid == 0:  # pragma: no cover - the child; it only ever execs or exits
            os.close(report_read)
            _become_job(request, fds, report_write, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.close(report_write)
        self.jobs[job_id] = pid
        self.job_of_pid[pid] = job_id
        self.execing[job_id] = (report_read, request)
        self.selector.register(report_read, selectors.EVENT_READ, job_id)

    def exec_reported(self, job_id: int) -> None:
        """The job's exec report pipe is readable: it execed, or says why not."""
        report, request = self.execing.pop(job_id)
        self.selector.unregister(report)
        try:
            why = os.read(report, 256).decode("ascii", "replace")
        finally:
            os.close(report)
        pid = self.jobs[job_id]
        if not why:
            self.send({"op": "started", "job": job_id, "pid": pid})
            return
        # The child exits at once; reap() forgets it without an "exited".
        del self.jobs[job_id]
        self.send({"op": "refused", "job": job_id, "error": _refusal(why, request)})

    def signal(self, job_id: int, signum: int) -> None:
        """Signal a live job's process group (its first process leads it)."""
        pid = self.jobs.get(job_id)
        if pid is None:
            return  # already reaped: its pid may belong to someone else now
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            # Forked but not yet a group leader: the process alone is the job.
            try:
                os.kill(pid, signum)
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
            if pid in self.job_of_pid:
                self._job_exited(pid, status)
            # else: a leftover of an ended job
        if reaped:
            self.kill_leftovers()

    def _job_exited(self, pid: int, status: int) -> None:
        job_id = self.job_of_pid.pop(pid)
        if job_id in self.execing:
            self.exec_reported(job_id)  # its pipe is closed: read it first
        if self.jobs.pop(job_id, None) is None:
            return  # refused before exec: already answered
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        self.send({"op": "exited", "job": job_id, "code": code, "signal": signum})

    def kill_leftovers(self) -> None:
        """Kill every child that is not a live job's first process, with all
        its descendants.

        While a job's first process runs it is the subreaper of everything
        it starts; only once it exits do its leftovers become ours. Never
        waits: the SIGCHLD of what dies brings us back to reap it (a job
        can keep a killed process unreapable, so waiting here would let it
        stall every other job).
        """
        leftovers = [pid for pid in _children() if pid not in self.job_of_pid]
        if leftovers:
            _kill_trees(leftovers)

    def kill_everything(self) -> None:
        """The daemon went away: end every job and everything they started,
        until we have no child left (for at most a few seconds)."""
        deadline = time.monotonic() + _KILL_EVERYTHING_SECONDS
        while time.monotonic() < deadline:
            _kill_trees(_children())
            reaped = False
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return  # nothing left
                if pid == 0:
                    break
                reaped = True
            if not reaped:
                time.sleep(0.002)


def _kill_trees(roots: list[int]) -> None:
    """SIGKILL these processes and every descendant, stopping them first.

    A stopped process cannot fork, so a tree that keeps re-growing (a fork
    chain) is frozen whole, then killed whole, instead of losing one level
    per round.
    """
    stopped: set[int] = set()
    for _ in range(_KILL_ROUNDS):
        tree = _descendants(roots)
        fresh = [pid for pid in tree if pid not in stopped]
        if not fresh:
            break
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped.update(fresh)
    for pid in stopped:
        _kill(pid)


def _descendants(roots: list[int]) -> list[int]:
    """These processes and all below them (through every thread's children)."""
    found: list[int] = []
    seen: set[int] = set()
    pending = list(roots)
    while pending and len(found) < _MAX_TREE:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children", "rb") as listing:
                    pending.extend(int(child) for child in listing.read().split())
            except OSError:
                continue
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _become_job(
    request: dict[str, Any], fds: list[int], report: int, mask: set[int | signal.Signals]
) -> None:
    """In the forked child: take on the job's identity and exec it. Never returns.

    Order matters: a new session first; the subreaper bit and the parent-death
    signal after the identity switch (which clears the latter); the working
    directory as the job's user, so its permissions are checked for it; the
    client's environment only in the exec, after everything that runs as the
    spawner's user.
    """
    step = "setup"
    try:
        # Our no-op handlers would swallow a cancel that arrives before exec.
        for signum in (*_JOB_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.setsid()
        uid = request.get("uid")
        if uid is not None and uid != os.geteuid():
            os.setgroups(request.get("groups") or [])
            os.setresgid(request["gid"], request["gid"], request["gid"])
            os.setresuid(uid, uid, uid)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        step = "chdir"
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        step = "setup"
        for target, fd in enumerate(fds):
            os.dup2(fd, target, inheritable=True)
        # Python ignores these at start-up; an ignored signal survives exec.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.closerange(3, report)
        os.closerange(report + 1, _MAX_FD)
        step = "exec"
        # The argv form is the point: the client names the program.
        os.execvpe(request["argv"][0], request["argv"], request["env"])  # noqa: S606
    except OSError as e:
        if step == "exec" and e.errno == errno.ENOENT and _on_path(request):
            # Looked up as the job's user, after the switch: nothing the
            # job could not see itself is revealed.
            step = "interpreter"
        os.write(report, f"{step}:{e.errno or 0}".encode())
    except BaseException:  # nothing may escape a forked child
        os.write(report, b"setup:0")
    os._exit(127)


def _refusal(why: str, request: dict[str, Any]) -> str:
    """The reason a job could not start, from its child's report."""
    step, _, number = why.partition(":")
    code = int(number) if number.isdigit() else 0
    reason = os.strerror(code) if code else "failed"
    # Bounded: a client-chosen program or directory name comes back here.
    program = _short(request["argv"][0])
    if step == "chdir":
        return f"working directory {_short(request['cwd'])}: {reason}"
    if step == "interpreter":
        return f"{program}: its interpreter was not found"
    if step == "exec" and code == errno.ENOENT:
        return f"{program}: executable not found"
    if step == "exec":
        return f"{program}: {reason}"
    return f"the job could not be set up: {reason}"


def _short(text: str) -> str:
    return text if len(text) <= _NAME_CHARS else text[:_NAME_CHARS] + "…"


def _on_path(request: dict[str, Any]) -> bool:
    """Whether the file exec looked for exists (then its #! interpreter is missing)."""
    program: str = request["argv"][0]
    if "/" in program:
        return os.path.exists(program)
    directories = request["env"].get("PATH", os.defpath).split(":")
    return any(os.path.exists(os.path.join(d or ".", program)) for d in directories)


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
    os.set_inheritable(CONTROL_FD, False)
    control = socket.socket(fileno=CONTROL_FD)
    control.setblocking(True)
    selector = selectors.DefaultSelector()
    spawner = Spawner(control, selector, allow_root)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    # Handlers, not SIG_IGN: an ignored signal would stay ignored in every job,
    # while a handler is reset by exec. The daemon, not a signal, stops us.
    for signum in (signal.SIGCHLD, *_JOB_SIGNALS):
        signal.signal(signum, lambda *_: None)
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
                elif key.data == "child":
                    try:
                        while os.read(wake_read, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    spawner.reap()
                elif key.data in spawner.execing:
                    spawner.exec_reported(key.data)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        spawner.kill_everything()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
