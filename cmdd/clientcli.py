"""The client commands of C{cmdd}: run, submit, status, result, logs, cancel,
jobs, login, token. They talk to a daemon over HTTPS (L{cmdd.client}).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import treq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react

from cmdd.client import Client, ClientFailure
from cmdd.clientconfig import (
    ClientConfigError,
    ClientSettings,
    check_url,
    load_settings,
    normalize_fingerprint,
    profile_path,
    write_profile,
)
from cmdd.clientformat import (
    CMDD_FAILED,
    EventStream,
    OptionError,
    command_text,
    exit_status,
    job_spec,
    job_table,
    pairs,
    sf_string,
    table,
)

Command = Callable[[Client, argparse.Namespace], Coroutine[Any, Any, int]]

EXAMPLES = """\
examples:
  cmdd login https://build1:8443 --user alice --fingerprint AB:CD:…
  cmdd run -- make -C /srv/app test       # live output; exits with the job's code
  cmdd run --shell 'echo $HOME; uname -a'
  cmdd submit --label team=ci -- sleep 60 # prints the job id
  cmdd logs -f 42 ; cmdd cancel 42
  cmdd jobs --state running

settings: CMDD_URL, CMDD_TOKEN or CMDD_TOKEN_FILE, CMDD_CACERT or
CMDD_FINGERPRINT; what is unset comes from the profile `cmdd login` writes
(CMDD_PROFILE, default ~/.config/cmdd/profile.json).
"""


def _spec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shell", metavar="COMMAND", help="a shell command (run by /bin/sh -c)")
    parser.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--label", "-l", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cwd", metavar="DIR", help="working directory of the job")
    parser.add_argument("--timeout", type=float, metavar="SECONDS")
    parser.add_argument("--user", "-u", metavar="USER", help="run as this Unix user (if allowed)")
    parser.add_argument("--at", metavar="RFC3339", help="start at this time (run_at)")
    parser.add_argument("--concurrency-key", metavar="KEY",
                        help="at most --concurrency-limit of your jobs with KEY run at once")
    parser.add_argument("--concurrency-limit", type=int, metavar="N")
    parser.add_argument("--idempotency-key", metavar="KEY",
                        help="a retry with the same KEY returns the first job (24 h)")
    parser.add_argument("argv", nargs="*", metavar="-- ARGV", help="the program and arguments")


def add_client_commands(commands: Any) -> None:
    """Add the client's subcommands to C{cmdd}'s argument parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    run = commands.add_parser(
        "run",
        help="run a job and pass on its output and exit code",
        description="Run a job; its stdout and stderr become ours, its exit code ours "
        "(128+N for signal N, 127 if it could not start, 125 if cmdd failed). "
        "Ctrl-C cancels the job, a second Ctrl-C detaches.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    run.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="stream output live (default: print it when the job ends)",
    )
    _spec_options(run)
    submit = commands.add_parser(
        "submit", help="submit a job; print its id", epilog=EXAMPLES, formatter_class=formatter
    )
    _spec_options(submit)
    for name, text in (
        ("status", "a job's state"),
        ("result", "a finished job's result (JSON)"),
        ("cancel", "cancel a job and wait until it ended"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("id", type=int)
    logs = commands.add_parser("logs", help="a job's stdout and stderr")
    logs.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    logs.add_argument("id", type=int)
    schedules = commands.add_parser("schedules", help="list your recurring schedules")
    schedules.add_argument("--json", action="store_true", help="the API's JSON, for scripts")
    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--state", action="append", default=[])
    jobs.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    jobs.add_argument("--owner")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true", help="the API's JSON, for scripts")
    login = commands.add_parser(
        "login",
        help="trade a password for a token and save a profile",
        description="Ask the daemon for a token (with your password) and save URL, trust and "
        "token in the profile (mode 0600).",
    )
    login.add_argument("url", nargs="?", help="the daemon, e.g. https://host:8443")
    login.add_argument("--user", default=getpass.getuser())
    login.add_argument("--password-stdin", action="store_true")
    login.add_argument("--fingerprint", help="the SHA-256 of the daemon's certificate")
    login.add_argument("--cacert", help="a PEM file to trust")
    login.add_argument("--expires", type=float, metavar="SECONDS")
    token = commands.add_parser("token", help="create, list or revoke bearer tokens")
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new token (printed once)")
    create.add_argument("--user", help="admins: a token for this user")
    create.add_argument("--expires", type=float, metavar="SECONDS")
    create.add_argument("--description", default="")
    actions.add_parser("list", help="your tokens")
    revoke = actions.add_parser("revoke", help="revoke a token")
    revoke.add_argument("token_id")


CLIENT_COMMANDS = frozenset(
    {"run", "submit", "status", "result", "logs", "cancel", "jobs", "schedules", "login", "token"}
)


def main(args: argparse.Namespace) -> int:
    """Run one client command; its exit status."""
    environ = dict(os.environ)
    try:
        if args.command == "login":
            settings = _login_settings(args, environ)
        else:
            settings = load_settings(environ)
    except ClientConfigError as e:
        print(f"cmdd: {e}", file=sys.stderr)
        return 2
    status: list[int] = [CMDD_FAILED]

    async def body(reactor: Any) -> None:
        try:
            client = Client(reactor, settings)
        except ClientFailure as e:
            print(f"cmdd: {e}", file=sys.stderr)
            status[0] = 2
            return
        try:
            status[0] = await COMMANDS[args.command](client, args)
        except ClientFailure as e:
            print(f"cmdd: {e}", file=sys.stderr)
            status[0] = CMDD_FAILED if args.command == "run" else 1
        except OptionError as e:
            print(f"cmdd: {e}", file=sys.stderr)
            status[0] = 2
        except BrokenPipeError:
            # The reader went away (`cmdd result 1 | head`): stop quietly,
            # and let nothing try to flush into the closed pipe at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            status[0] = 0
        finally:
            await client.close()

    try:
        react(lambda reactor: ensureDeferred(body(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return CMDD_FAILED
    return status[0]


def _login_settings(args: argparse.Namespace, environ: dict[str, str]) -> ClientSettings:
    base = load_settings(environ)
    url = check_url(args.url) if args.url else base.url
    fingerprint = base.fingerprint
    if args.fingerprint:
        fingerprint = normalize_fingerprint(args.fingerprint)
    cacert = os.path.abspath(args.cacert) if args.cacert else base.cacert
    return ClientSettings(url=url, token=None, cacert=cacert, fingerprint=fingerprint)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec = job_spec(
        args.argv,
        shell=args.shell,
        env=args.env,
        labels=args.label,
        cwd=args.cwd,
        timeout=args.timeout,
        user=args.user,
    )
    if args.at is not None:
        spec["run_at"] = args.at
    if args.concurrency_key is not None:
        spec["concurrency_key"] = args.concurrency_key
    if args.concurrency_limit is not None:
        spec["concurrency_limit"] = args.concurrency_limit
    return spec


async def _post_job(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """Submit the job the options describe (a retry with a key: the same job)."""
    headers = {}
    if args.idempotency_key is not None:
        headers["Idempotency-Key"] = sf_string(args.idempotency_key)
    _, job = await client.send(
        "POST", "/api/jobs", _spec(args), headers=headers, expect=(200, 202)
    )
    return dict(job)


async def _submit(client: Client, args: argparse.Namespace) -> int:
    print((await _post_job(client, args))["id"])
    return 0


async def _schedules(client: Client, args: argparse.Namespace) -> int:
    _, listing = await client.send("GET", "/api/schedules")
    if args.json:
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return 0
    rows = [
        (str(s["id"]), s["owner"], s["cron"], s["timezone"],
         "paused" if s["paused"] else (s["next_run"] or "-"), command_text(s["job"]))
        for s in listing["schedules"]
    ]  # fmt: skip
    if rows:
        header = ("ID", "OWNER", "CRON", "TIMEZONE", "NEXT RUN", "COMMAND")
        print(table(header, rows, shutil.get_terminal_size().columns))
    return 0


async def _status(client: Client, args: argparse.Namespace) -> int:
    _, status = await client.send("GET", f"/api/statuses/{args.id}", expect=(200, 303))
    print(f"{status['id']}\t{status['state']}")
    return 0


async def _result(client: Client, args: argparse.Namespace) -> int:
    _, result = await client.send("GET", f"/api/results/{args.id}")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


async def _cancel(client: Client, args: argparse.Namespace) -> int:
    _, job = await client.send("PATCH", f"/api/jobs/{args.id}", {"status": "cancelled"})
    print(f"{job['id']}\t{job['state']}")
    return 0


async def _jobs(client: Client, args: argparse.Namespace) -> int:
    params: dict[str, list[str]] = {"limit": [str(args.limit)], "state": args.state}
    if args.owner:
        params["owner"] = [args.owner]
    # The API writes a label filter as key:value (repeatable: all must match).
    params["label"] = [":".join(pair) for pair in pairs(args.label, "--label").items()]
    _, page = await client.send("GET", "/api/jobs", params=params)
    if args.json:
        print(json.dumps(page, indent=2, ensure_ascii=False))
    elif page["jobs"]:
        print(job_table(page["jobs"], shutil.get_terminal_size().columns, time.time()))
    return 0


async def _wait_final(client: Client, job_id: int) -> None:
    while True:
        response, _ = await client.send(
            "GET", f"/api/statuses/{job_id}", params={"wait": ["300"]}, expect=(200, 303)
        )
        if response.code == 303:
            return


def _write(stream: Any, text: str) -> None:
    stream.write(text)
    stream.flush()


async def _follow(client: Client, job_id: int) -> dict[str, Any]:
    """Stream a job's output to ours; its C{end} event."""
    end: dict[str, Any] = {}

    def deliver(event: str, data: str) -> None:
        # Output events carry their text as a JSON string (CR and all).
        if event == "stdout":
            _write(sys.stdout, json.loads(data))
        elif event == "stderr":
            _write(sys.stderr, json.loads(data))
        elif event == "end":
            end.update(json.loads(data))

    parser = EventStream(deliver)
    await client.stream(f"/api/jobs/{job_id}/output", parser.feed, {"Accept": "text/event-stream"})
    if not end:
        raise ClientFailure(f"the output stream of job {job_id} ended early")
    return end


async def _print_output(client: Client, job_id: int) -> None:
    for name, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        response = await client.open("GET", f"/api/jobs/{job_id}/output/{name}")
        data = await treq.content(response)
        out.buffer.write(data)
        out.flush()


async def _logs(client: Client, args: argparse.Namespace) -> int:
    if args.follow:
        await _follow(client, args.id)
    else:
        await client.send("GET", f"/api/statuses/{args.id}", expect=(200, 303))
        await _print_output(client, args.id)
    return 0


async def _run(client: Client, args: argparse.Namespace) -> int:
    job_id = (await _post_job(client, args))["id"]
    interrupts = _CancelOnInterrupt(client, job_id)
    try:
        if args.follow:
            end = await interrupts.race(_follow(client, job_id))
        else:
            await interrupts.race(_wait_final(client, job_id))
            _, end = await client.send("GET", f"/api/results/{job_id}")
            await _print_output(client, job_id)
    except _Detached:
        print(f"cmdd: detached from job {job_id}", file=sys.stderr)
        return 130
    finally:
        interrupts.restore()
    if end.get("state") in ("lost", "not_executed") or end.get("output_error"):
        print(f"cmdd: job {job_id} {end.get('state')}: {end.get('reason')}", file=sys.stderr)
    return exit_status(end)


class _Detached(Exception):  # noqa: N818 (a signal, not an error)
    """The user pressed Ctrl-C twice: leave the job and exit."""


class _CancelOnInterrupt:
    """First Ctrl-C cancels the job (output goes on until it ends); the
    second detaches. This is the client process's own handler, set for the
    length of one C{cmdd run}."""

    def __init__(self, client: Client, job_id: int) -> None:
        self._client = client
        self._job_id = job_id
        self._presses = 0
        self._detach: Deferred[None] = Deferred()
        self._previous = signal.signal(signal.SIGINT, self._interrupted)

    def _interrupted(self, signum: int, frame: object) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self._press)  # type: ignore[attr-defined]

    def _press(self) -> None:
        self._presses += 1
        if self._presses == 1:
            print(
                f"\ncmdd: cancelling job {self._job_id} (Ctrl-C again to detach)", file=sys.stderr
            )
            cancel = ensureDeferred(
                self._client.send(
                    "PATCH", f"/api/jobs/{self._job_id}", {"status": "cancelled"}, expect=(200, 409)
                )
            )
            cancel.addErrback(lambda f: print(f"cmdd: {f.getErrorMessage()}", file=sys.stderr))
        elif not self._detach.called:
            self._detach.callback(None)

    async def race(self, work: Coroutine[Any, Any, Any]) -> Any:
        """C{work}'s result, unless the user detaches first."""
        done = ensureDeferred(work)
        settled: Deferred[None] = Deferred()

        def settle(result: object) -> object:
            if not settled.called:
                settled.callback(None)
            return result

        done.addBoth(settle)
        self._detach.addCallback(settle)
        await settled
        if not done.called:
            done.addErrback(lambda _: None)
            done.cancel()
            raise _Detached()
        return await done

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


async def _login(client: Client, args: argparse.Namespace) -> int:
    password = (
        sys.stdin.readline().rstrip("\n")
        if args.password_stdin
        else getpass.getpass(f"password for {args.user} at {client.base}: ")
    )
    body: dict[str, Any] = {"description": f"cmdd login from {socket.gethostname()}"}
    if args.expires is not None:
        body["expires_in"] = args.expires
    _, token = await client.send(
        "POST", "/api/tokens", body, basic=(args.user, password), expect=(201,)
    )
    profile = {"url": client.base, "token": token["token"], "user": args.user}
    if client.settings.fingerprint:
        profile["fingerprint"] = client.settings.fingerprint
    if client.settings.cacert:
        profile["cacert"] = client.settings.cacert
    path = profile_path(os.environ)
    write_profile(path, profile)
    print(
        f"logged in to {client.base} as {args.user}; token {token['id']} expires "
        f"{token['expires']}; profile {path}",
        file=sys.stderr,
    )
    return 0


async def _token(client: Client, args: argparse.Namespace) -> int:
    if args.action == "create":
        body: dict[str, Any] = {"description": args.description}
        if args.user:
            body["user"] = args.user
        if args.expires is not None:
            body["expires_in"] = args.expires
        _, token = await client.send("POST", "/api/tokens", body, expect=(201,))
        print(token["token"])
        print(
            f"token {token['id']} for {token['owner']} expires {token['expires']}", file=sys.stderr
        )
    elif args.action == "list":
        _, listing = await client.send("GET", "/api/tokens")
        rows = [
            (t["id"], t["owner"], t["created"] or "", t["expires"] or "", t["description"] or "")
            for t in listing["tokens"]
        ]
        header = ("ID", "OWNER", "CREATED", "EXPIRES", "DESCRIPTION")
        print(table(header, rows, shutil.get_terminal_size().columns))
    else:
        await client.send("DELETE", f"/api/tokens/{args.token_id}", expect=(204,))
        print(f"revoked {args.token_id}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Command] = {
    "run": _run,
    "submit": _submit,
    "status": _status,
    "result": _result,
    "cancel": _cancel,
    "logs": _logs,
    "jobs": _jobs,
    "schedules": _schedules,
    "login": _login,
    "token": _token,
}
