"""The C{cmdd} console command: tools for operators (more grow here)."""

from __future__ import annotations

import argparse
import sys

from cmdd import __version__
from cmdd.journal import DataDirLocked, JournalCorrupt
from cmdd.offline import compact, verify


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
    return parser


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
    if args.command == "journal":
        return _verify(args.data_dir) if args.action == "verify" else _compact(args.data_dir)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
