"""The isolation plan, without processes: the spawner's command line and the
settings that decide who jobs run as (pure, see L{cmdd.isolation})."""

from __future__ import annotations

import pytest

from cmdd.config import ConfigError, build_settings
from cmdd.isolation import (
    Sandbox,
    ancestors,
    hidden_files,
    spawner_command,
    without_isolation_warning,
)


def test_the_sandbox_covers_the_data_directory_and_key_files_read_only() -> None:
    """The data directory becomes an empty read-only tmpfs and each key file an
    empty file; the daemon's PID namespace is left and the sandbox dies with it."""
    argv = Sandbox("/usr/bin/bwrap", ("/var/lib/cmdd",), ("/etc/cmdd/key.pem",)).arguments(
        as_root=False
    )
    joined = " ".join(argv)
    assert "--tmpfs /var/lib/cmdd --remount-ro /var/lib/cmdd" in joined
    assert "--ro-bind /dev/null /etc/cmdd/key.pem" in joined
    assert "--unshare-pid" in argv and "--die-with-parent" in argv
    assert argv.index("--proc") < argv.index("--tmpfs"), "mounts over / come after it"
    assert argv[-1] == "--"
    assert "--cap-add" not in argv, "an unprivileged spawner gets no capabilities"
    assert "--unshare-net" not in argv


def test_a_root_spawner_keeps_only_the_capabilities_it_needs() -> None:
    """As root, bwrap drops every capability but switching users and signalling."""
    argv = Sandbox("/usr/bin/bwrap", ("/d",), network=False, private_tmp=True).arguments(
        as_root=True
    )
    added = {argv[i + 1] for i, arg in enumerate(argv) if arg == "--cap-add"}
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert added == {"CAP_SETUID", "CAP_SETGID", "CAP_KILL"}
    assert "--unshare-net" in argv
    assert "--tmpfs /tmp" in " ".join(argv)


def test_the_spawner_command_line() -> None:
    """Isolated Python (-I -S) running the spawner file, with root allowed only
    when asked for."""
    plain = spawner_command(
        "/usr/bin/python3", "/x/spawner.py", None, as_root=True, allow_root_jobs=False
    )
    assert plain == ["/usr/bin/python3", "-I", "-S", "/x/spawner.py"]
    sandboxed = spawner_command(
        "/usr/bin/python3",
        "/x/spawner.py",
        Sandbox("/bin/bwrap", ("/d",)),
        as_root=False,
        allow_root_jobs=True,
        check=True,
    )
    assert sandboxed[0] == "/bin/bwrap"
    assert sandboxed[-3:] == ["/x/spawner.py", "--allow-root", "--check"]


def test_key_files_inside_the_data_directory_need_no_cover_of_their_own() -> None:
    """Only secrets outside the hidden directories get a file cover."""
    assert hidden_files(["/d/tls/key.pem", "/etc/key.pem", "/dd/key"], ["/d"]) == (
        "/dd/key",
        "/etc/key.pem",
    )


def test_an_unprivileged_daemon_without_a_sandbox_is_loud() -> None:
    """Without root and without bubblewrap the operator is told what jobs reach."""
    warning = without_isolation_warning(as_root=False)
    assert warning is not None and "NOT ISOLATED" in warning
    assert without_isolation_warning(as_root=True) is None


@pytest.mark.parametrize(
    "values",
    [{"job_user": "root"}, {"run_as": {"alice": ["deploy", "root"]}}],
    ids=["job_user", "run_as"],
)
def test_root_jobs_need_an_explicit_allowance(values: dict[str, object]) -> None:
    """A root job user or run-as target is refused unless allow_root_jobs is set."""
    with pytest.raises(ConfigError, match="allow_root_jobs"):
        build_settings(values, {})
    settings = build_settings({**values, "allow_root_jobs": True}, {})
    assert settings.allow_root_jobs


def test_isolation_settings_are_checked() -> None:
    """job_sandbox takes auto, bubblewrap or off; job_user a non-empty name."""
    assert build_settings({}, {}).job_sandbox == "auto"
    assert build_settings({}, {}).job_user == "nobody"
    with pytest.raises(ConfigError, match="job_sandbox"):
        build_settings({"job_sandbox": "docker"}, {})
    with pytest.raises(ConfigError, match="job_user"):
        build_settings({"job_user": ""}, {})


def test_an_unprivileged_daemons_jobs_get_a_read_only_host() -> None:
    """Jobs sharing the daemon's uid see the host read-only but for the writable
    paths, and the spawner is PID 1 of the sandbox."""
    argv = Sandbox(
        "/usr/bin/bwrap", ("/srv/cmdd/data",), read_only=True, writable=("/tmp", "/srv/builds")
    ).arguments(as_root=False)
    joined = " ".join(argv)
    assert "--ro-bind / /" in joined
    assert "--bind /tmp /tmp" in joined and "--bind /srv/builds /srv/builds" in joined
    assert "--as-pid-1" in argv


def test_every_ancestor_of_the_data_directory_becomes_a_mount_point() -> None:
    """A mount point cannot be renamed or replaced: no job can swap a directory
    above the data directory for one of its own. Ancestors keep their access."""
    argv = Sandbox(
        "/usr/bin/bwrap", ("/tmp/x/cmdd-data",), read_only=True, writable=("/tmp",)
    ).arguments(as_root=False)
    joined = " ".join(argv)
    assert "--bind /tmp/x /tmp/x" in joined, "inside a writable path: stays writable"
    assert joined.index("--bind /tmp/x /tmp/x") < joined.index("--tmpfs /tmp/x/cmdd-data")
    home = Sandbox("/usr/bin/bwrap", ("/home/ci/cmdd-data",), read_only=True).arguments(
        as_root=False
    )
    assert "--ro-bind /home /home --ro-bind /home/ci /home/ci" in " ".join(home)
    assert ancestors(["/a/b/c", "/a/d"]) == ["/a", "/a/b"]


def test_with_a_private_tmp_no_host_directory_under_tmp_is_brought_back() -> None:
    """Binding an ancestor under /tmp would show the host's /tmp again."""
    argv = Sandbox("/usr/bin/bwrap", ("/tmp/x/data",), private_tmp=True).arguments(as_root=True)
    assert "/tmp/x" not in argv


def test_a_private_tmp_does_not_hide_the_spawner_itself() -> None:
    """Installed under /tmp (a CI checkout), the spawner's interpreter and
    program are bound back read-only over the private /tmp."""
    argv = Sandbox(
        "/usr/bin/bwrap", ("/d",), private_tmp=True,
        needed_files=("/tmp/ci/spawner.py", "/usr/bin/python3"),
    ).arguments(as_root=True)  # fmt: skip
    joined = " ".join(argv)
    assert "--ro-bind /tmp/ci/spawner.py /tmp/ci/spawner.py" in joined
    assert joined.index("--tmpfs /tmp") < joined.index("--ro-bind /tmp/ci/spawner.py")
    assert "/usr/bin/python3 /usr/bin/python3" not in joined, "only what the tmpfs hides"
