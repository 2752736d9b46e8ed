"""The C{cmdd} console command (admin and client tools grow here)."""

from __future__ import annotations

import argparse
import sys

from cmdd import __version__


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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console command."""
    parser = build_parser()
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
