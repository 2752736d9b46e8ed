"""The C{cmdd} console command: the client (run, jobs, logs, …; see
L{cmdd.clientcli}) and tools for operators (users, the journal)."""

from __future__ import annotations

import argparse
import os
import sys

import attrs

from cmdd import __version__
from cmdd.clientcli import CLIENT_COMMANDS, add_client_commands
from cmdd.clientcli import main as client_main
from cmdd.journal import DataDirLocked, JournalCorrupt
from cmdd.offline import compact, verify
from cmdd.users import (
    ROLES,
    USERS_NAME,
    UserError,
    check_name,
    generate_password,
    hash_password,
    new_user,
    read_users,
    write_users,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for C{cmdd}."""
    parser = argparse.ArgumentParser(
        prog="cmdd",
        description=(
            "cmdd runs commands on this host for HTTPS REST clients. "
            "Start the daemon with: twistd -n cmdd (see twistd cmdd --help)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cmdd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_client_commands(commands)
    journal = commands.add_parser("journal", help="check or compact the job journal")
    actions = journal.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("verify", "check the journal line by line (read-only; safe while running)"),
        ("compact", "rewrite the journal as its live jobs (daemon must be stopped)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument(
            "--data-dir", "-d", default="cmdd-data", help="data directory [default: cmdd-data]"
        )
    users = commands.add_parser("user", help="manage cmdd users (the daemon picks changes up)")
    user_actions = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("add", "create a user; prints only the generated password on stdout"),
        ("list", "list users and roles"),
        ("remove", "remove a user and revoke their tokens (at once in the daemon)"),
        ("passwd", "set a user's password; prints a generated one unless --password-stdin"),
    ):
        action = user_actions.add_parser(name, help=text, description=text)
        action.add_argument(
            "--data-dir", "-d", default="cmdd-data", help="data directory [default: cmdd-data]"
        )
        if name != "list":
            action.add_argument("name", help="user name")
        if name == "add":
            action.add_argument(
                "--role",
                choices=ROLES,
                default="user",
                help="admin: every job; user: own jobs; metrics: only /metrics [default: user]",
            )
        if name in ("add", "passwd"):
            action.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
    return parser


def _new_password(from_stdin: bool) -> tuple[str, bool]:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise UserError("no password on stdin")
        return password, False
    return generate_password(), True


def _user(args: argparse.Namespace) -> int:
    path = os.path.join(args.data_dir, USERS_NAME)
    try:
        users = read_users(path)
        if args.action == "list":
            for user in sorted(users.values(), key=lambda u: u.name):
                print(f"{user.name}\t{user.role}")
            return 0
        name = check_name(args.name)
        if args.action == "add":
            if name in users:
                raise UserError(f"user {name} already exists")
            password, generated = _new_password(args.password_stdin)
            # A fresh generation: tokens of an earlier user of this name stay dead.
            users[name] = new_user(name, args.role, hash_password(password))
        elif name not in users:
            raise UserError(f"no user {name}")
        elif args.action == "remove":
            del users[name]
        else:
            password, generated = _new_password(args.password_stdin)
            users[name] = attrs.evolve(users[name], password_hash=hash_password(password))
        os.makedirs(args.data_dir, mode=0o700, exist_ok=True)
        write_users(path, users)
    except (UserError, OSError) as e:
        print(f"cmdd: {e}", file=sys.stderr)
        return 1
    print(f"{args.action}: user {name} done ({path})", file=sys.stderr)
    if args.action in ("add", "passwd") and generated:
        print(password)
    return 0


def _verify(data_dir: str) -> int:
    result = verify(data_dir)
    print(f"journal: {result.path}")
    print(
        f"records: {result.records}  bytes: {result.bytes}  jobs: {result.jobs}  "
        f"next id: {result.next_id}"
    )
    for state, count in sorted(result.by_state.items()):
        print(f"  {state}: {count}")
    for problem in result.problems:
        print(f"problem: line {problem.line}: {problem.why}")
    if result.torn_tail_line is not None:
        print(
            f"problem: line {result.torn_tail_line}: torn last write "
            "(cut automatically at the next start)"
        )
    print(f"snapshot: {result.snapshot}")
    print("OK" if result.ok else "DAMAGED")
    return 0 if result.ok else 1


def _compact(data_dir: str) -> int:
    try:
        jobs, before, after = compact(data_dir)
    except (DataDirLocked, JournalCorrupt) as e:
        print(f"cmdd: {e}", file=sys.stderr)
        return 1
    print(f"compacted: {jobs} jobs, {before} -> {after} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console command."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "user":
        return _user(args)
    if args.command == "journal":
        return _verify(args.data_dir) if args.action == "verify" else _compact(args.data_dir)
    if args.command in CLIENT_COMMANDS:
        return client_main(args)
    parser.print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
