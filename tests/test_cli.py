"""The cmdd console command: version, journal verify and compact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmdd import __version__
from cmdd.cli import main
from cmdd.codec import encode
from cmdd.jobs import Created, Deleted, Ended, Outcome, State
from cmdd.journal import lock_data_dir
from cmdd.spec import parse_spec

SPEC = parse_spec({"command": "true"})


def journal(tmp_path: Path, extra: bytes = b"") -> Path:
    events = [
        Created(1, 1.0, SPEC),
        Ended(1, 2.0, Outcome(State.CANCELLED)),
        Created(2, 3.0, SPEC),
        Ended(2, 4.0, Outcome(State.CANCELLED)),
        Deleted(2, 5.0),
        Created(3, 6.0, SPEC),
    ]
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"".join(encode(i, e) for i, e in enumerate(events, 1)) + extra)
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """cmdd --version prints the version."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cmdd {__version__}"


def test_verify_summarises_a_healthy_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify counts records and jobs by state and exits 0 when all is well."""
    journal(tmp_path)
    assert main(["journal", "verify", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "records: 6" in out and "jobs: 2" in out and "next id: 4" in out
    assert "cancelled: 1" in out and "queued: 1" in out and out.strip().endswith("OK")


def test_verify_reports_damage_without_changing_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify names every damaged line, exits 1, and leaves the file as it is."""
    path = journal(tmp_path)
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    lines[1] = b"{not json}\n"
    damaged = b"".join(lines) + b'{"v":1,"seq'
    path.write_bytes(damaged)
    assert main(["journal", "verify", "-d", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "problem: line 2:" in out and "problem: line 7: torn" in out
    assert out.strip().endswith("DAMAGED")
    assert path.read_bytes() == damaged


def test_compact_keeps_jobs_and_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """compact drops deleted jobs' history but keeps live jobs and the id counter."""
    journal(tmp_path)
    assert main(["journal", "compact", "-d", str(tmp_path)]) == 0
    assert "compacted: 2 jobs" in capsys.readouterr().out
    assert main(["journal", "verify", "-d", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "jobs: 2" in out and "next id: 4" in out


def test_compact_refuses_while_the_daemon_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running daemon holds the data directory's lock; compact says so."""
    journal(tmp_path)
    lock_data_dir(str(tmp_path))
    assert main(["journal", "compact", "-d", str(tmp_path)]) == 1
    assert "another cmdd process" in capsys.readouterr().err


def test_user_add_list_passwd_remove(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cmdd user` manages the users file: add prints only the password on stdout,
    the file is 0600 with scrypt hashes, passwd changes it, remove deletes."""
    from cmdd.users import read_users, verify_password

    data = str(tmp_path)
    assert main(["user", "add", "alice", "--role", "admin", "-d", data]) == 0
    captured = capsys.readouterr()
    password = captured.out.strip()
    assert len(password) >= 16 and "\n" not in password and "alice" in captured.err
    users = read_users(str(tmp_path / "users"))
    assert users["alice"].role == "admin"
    assert verify_password(password, users["alice"].password_hash)
    assert (tmp_path / "users").stat().st_mode & 0o777 == 0o600
    assert main(["user", "add", "alice", "-d", data]) == 1
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("new-pass\n"))
    assert main(["user", "passwd", "alice", "--password-stdin", "-d", data]) == 0
    assert capsys.readouterr().out == ""
    assert verify_password("new-pass", read_users(str(tmp_path / "users"))["alice"].password_hash)
    assert main(["user", "list", "-d", data]) == 0
    assert capsys.readouterr().out == "alice\tadmin\n"
    assert main(["user", "remove", "alice", "-d", data]) == 0
    assert main(["user", "remove", "alice", "-d", data]) == 1
    assert main(["user", "add", "Bad Name", "-d", data]) == 1
    assert "invalid user name" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_root_keeps_the_daemons_files_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cmdd user add|passwd|remove` and `cmdd journal compact` run as root
    against a daemon running as another user leave the users file and the
    journal owned by that user (mode 0600), so the daemon can still read and
    rewrite them."""
    daemon_uid = daemon_gid = 65534
    data = str(tmp_path)
    users = tmp_path / "users"
    users.write_text("# cmdd users\n")
    os.chown(users, daemon_uid, daemon_gid)
    users.chmod(0o600)
    for argv in (["user", "add", "alice"], ["user", "passwd", "alice"],
                 ["user", "remove", "alice"]):
        assert main([*argv, "-d", data]) == 0, capsys.readouterr().err
        info = users.stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
            daemon_uid, daemon_gid, 0o600
        ), argv
    path = journal(tmp_path)
    os.chown(path, daemon_uid, daemon_gid)
    path.chmod(0o600)
    assert main(["journal", "compact", "-d", data]) == 0
    info = path.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (daemon_uid, daemon_gid, 0o600)
