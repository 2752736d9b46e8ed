"""Durable private files: atomic replacement, mode 0600, the owner kept,
never written through a link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cmdd.files import write_private_file

NOBODY = 65534

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


@as_root
def test_root_rewriting_keeps_the_owner(tmp_path: Path) -> None:
    """When root rewrites a file another user owns (the daemon's users file),
    the new file keeps that owner and group, with mode 0600."""
    path = tmp_path / "users"
    path.write_bytes(b"old\n")
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o644)
    write_private_file(str(path), b"new\n")
    assert path.read_bytes() == b"new\n"
    assert owner_and_mode(path) == (NOBODY, NOBODY, 0o600)
    assert os.listdir(tmp_path) == ["users"], "no temporary file is left"


def test_a_new_file_is_the_writers_and_0600_whatever_the_umask(tmp_path: Path) -> None:
    """A file that did not exist belongs to whoever writes it, mode 0600 even
    under a umask that would take the owner's write bit."""
    path = tmp_path / "tokens.json"
    old_umask = os.umask(0o277)
    try:
        write_private_file(str(path), b"{}")
    finally:
        os.umask(old_umask)
    assert owner_and_mode(path) == (os.geteuid(), os.getegid(), 0o600)


def test_a_symlink_at_the_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    """Someone who can write the data directory plants a symlink where the
    next rewrite puts its temporary file (users.<pid>.tmp, journal.jsonl.compact):
    root's rewrite replaces the link and never truncates or writes its target."""
    from cmdd.journal import write_atomically

    target = tmp_path / "precious"
    target.write_bytes(b"precious\n")
    users = tmp_path / "users"
    (tmp_path / f"users.{os.getpid()}.tmp").symlink_to(target)
    write_private_file(str(users), b"new\n")
    journal = tmp_path / "journal.jsonl"
    (tmp_path / "journal.jsonl.compact").symlink_to(target)
    write_atomically(str(journal), [b"line\n"])
    assert target.read_bytes() == b"precious\n"
    assert users.read_bytes() == b"new\n" and not users.is_symlink()
    assert journal.read_bytes() == b"line\n" and not journal.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["journal.jsonl", "precious", "users"]
