"""Settings: defaults, the TOML config file, command-line overrides.

Pure (except reading the config file): validated once here, trusted after.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from typing import Any, cast

import attrs
from twisted.internet.endpoints import quoteStringArgument

from cmdd.destinations import parse_networks
from cmdd.slurmplan import SlurmOptions

DEFAULT_LISTEN = "ssl:8443:interface=127.0.0.1"
MIB = 1024 * 1024


class ConfigError(ValueError):
    """A setting has a value the daemon cannot use; the message says which."""


@attrs.frozen
class Settings:
    """Everything the daemon is configured with.

    C{max_running} defaults to 4 x CPUs but at least 64: a short job holds
    its slot for about 20-30 ms under load (its start's fsync, the spawn
    request and answers, its exit and pipe ends, each a reactor turn) while
    its process lives a millisecond or two, so fewer slots leave the CPU idle
    and the queue growing (bench/README.md, "Issue 11: first slice"). Long
    jobs that sleep or wait cost a process each; CPU-bound ones share the
    CPUs whatever the limit, and memory-heavy ones want a lower one.
    """

    data_dir: str
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    allow_plaintext: bool = False
    max_running: int = max(64, 4 * (os.cpu_count() or 1))
    max_queued: int = 10_000
    #: Jobs waiting for their run_at, and recurring schedules (all users).
    max_scheduled: int = 100_000
    max_schedules: int = 10_000
    max_output_bytes: int = 16 * MIB
    max_body_bytes: int = MIB
    #: Request body bytes held in memory across all connections (more: 503).
    body_budget_bytes: int = 32 * MIB
    #: Open client connections (the next one: 503 and closed).
    max_connections: int = 1024
    #: Seconds from a request's first byte to its last (more: 408).
    receive_timeout: float = 30.0
    default_timeout: float | None = None
    kill_grace: float = 5.0
    #: Seconds a stop (SIGTERM/SIGINT) lets running jobs finish before ending them.
    stop_grace: float = 30.0
    idle_timeout: float = 60.0
    journal_fsync: str = "always"
    journal_recover: bool = False
    journal_compact_bytes: int = 64 * MIB
    retain_days: float | None = None
    retain_jobs: int | None = None
    client_ca: str | None = None
    #: (cmdd user, Unix user) pairs allowed for the job spec's "user".
    run_as: frozenset[tuple[str, str]] = frozenset()
    #: Who jobs run as when the daemon runs as root and the spec has no "user".
    job_user: str = "nobody"
    #: auto (bubblewrap when it works), bubblewrap (required) or off.
    job_sandbox: str = "auto"
    job_private_tmp: bool = False
    job_network: bool = True
    #: Whether any job may run as root (job_user or an allow-listed "user").
    allow_root_jobs: bool = False
    #: What an unprivileged daemon's sandboxed jobs may write besides /tmp and /var/tmp.
    job_writable_paths: tuple[str, ...] = ()
    #: Seconds a webhook attempt may take (connect and answer).
    webhook_timeout: float = 15.0
    #: Seconds after its event a failing callback is given up.
    webhook_max_age: float = 24 * 3600.0
    webhook_max_in_flight: int = 64
    webhook_per_destination: int = 4
    #: CIDR networks callbacks may (allow) or may not (deny) connect to.
    webhook_allow: tuple[str, ...] = ()
    webhook_deny: tuple[str, ...] = ()
    #: Where jobs run: "local" (this host) or "slurm" (see README,
    #: "Running jobs on Slurm"), with the [executor] table's settings.
    executor: str = "local"
    slurm: SlurmOptions = attrs.field(factory=SlurmOptions)
    #: The directory Slurm's nodes write job output in (None: the default).
    slurm_shared_dir: str | None = None

    @property
    def shared_dir(self) -> str:
        """The Slurm executor's output directory: the configured one, or
        C{DATA_DIR-slurm} beside the data directory. Not inside it: the job's
        user must reach its own directory, and the data directory is the
        daemon's alone."""
        return self.slurm_shared_dir or self.data_dir.rstrip("/") + "-slurm"

    @property
    def journal_path(self) -> str:
        """The job history journal."""
        return os.path.join(self.data_dir, "journal.jsonl")

    @property
    def tls_dir(self) -> str:
        """Where the generated certificate lives."""
        return os.path.join(self.data_dir, "tls")

    @property
    def output_dir(self) -> str:
        """Where job output files live."""
        return os.path.join(self.data_dir, "output")


_INTS = (
    "max_running",
    "max_queued",
    "max_scheduled",
    "max_schedules",
    "max_output_bytes",
    "max_body_bytes",
    "body_budget_bytes",
    "max_connections",
    "journal_compact_bytes",
    "retain_jobs",
    "webhook_max_in_flight",
    "webhook_per_destination",
)
_FLOATS = (
    "default_timeout",
    "kill_grace",
    "idle_timeout",
    "receive_timeout",
    "retain_days",
    "webhook_timeout",
    "webhook_max_age",
)
_BOOLS = ("allow_plaintext", "journal_recover", "job_private_tmp", "job_network", "allow_root_jobs")
FSYNC_MODES = ("always", "never")
SANDBOX_MODES = ("auto", "bubblewrap", "off")
KEYS = frozenset(
    {
        "data_dir",
        "listen",
        "journal_fsync",
        "client_ca",
        "run_as",
        "job_user",
        "job_sandbox",
        "job_writable_paths",
        "stop_grace",
        "webhook_allow",
        "webhook_deny",
        "executor",
        *_BOOLS,
        *_INTS,
        *_FLOATS,
    }
)


def load_toml(path: str) -> dict[str, Any]:
    """The settings in a TOML file (top-level keys, or a [cmdd] table)."""
    try:
        with open(path, "rb") as config_file:
            data = tomllib.load(config_file)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    table = data.get("cmdd", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [cmdd] must be a table")
    if table is not data and "executor" in data:
        table = {**table, "executor": data["executor"]}  # [executor] beside [cmdd]
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return table


def build_settings(file_values: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
    """Defaults, then the config file, then command-line values (not C{None})."""
    merged: dict[str, Any] = dict(file_values)
    merged.update({key: value for key, value in overrides.items() if value is not None})
    values: dict[str, Any] = {"data_dir": os.path.abspath(str(merged.get("data_dir", "cmdd-data")))}
    if "listen" in merged:
        listen = merged["listen"]
        if isinstance(listen, str):
            listen = [listen]
        if (
            not isinstance(listen, list | tuple)
            or not listen
            or not all(isinstance(item, str) and item for item in listen)
        ):
            raise ConfigError("listen must be one or more endpoint strings")
        values["listen"] = tuple(listen)
    for key in _BOOLS:
        if key in merged:
            if not isinstance(merged[key], bool):
                raise ConfigError(f"{key} must be true or false")
            values[key] = merged[key]
    if "run_as" in merged:
        values["run_as"] = _run_as(merged["run_as"])
    if "client_ca" in merged:
        if not isinstance(merged["client_ca"], str) or not merged["client_ca"]:
            raise ConfigError("client_ca must be the path of a PEM file")
        values["client_ca"] = os.path.abspath(merged["client_ca"])
    if "journal_fsync" in merged:
        if merged["journal_fsync"] not in FSYNC_MODES:
            raise ConfigError(f"journal_fsync must be one of {', '.join(FSYNC_MODES)}")
        values["journal_fsync"] = merged["journal_fsync"]
    if "job_user" in merged:
        if not isinstance(merged["job_user"], str) or not merged["job_user"]:
            raise ConfigError("job_user must be a Unix user name")
        values["job_user"] = merged["job_user"]
    if "job_writable_paths" in merged:
        paths = merged["job_writable_paths"]
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list | tuple) or not all(
            isinstance(p, str) and os.path.isabs(p) for p in paths
        ):
            raise ConfigError("job_writable_paths must be a list of absolute paths")
        values["job_writable_paths"] = tuple(os.path.normpath(p) for p in paths)
    for key in ("webhook_allow", "webhook_deny"):
        if key in merged:
            values[key] = _networks(key, merged[key])
    if "job_sandbox" in merged:
        if merged["job_sandbox"] not in SANDBOX_MODES:
            raise ConfigError(f"job_sandbox must be one of {', '.join(SANDBOX_MODES)}")
        values["job_sandbox"] = merged["job_sandbox"]
    for key in _INTS:
        if key in merged:
            values[key] = _number(key, merged[key], int)
    for key in _FLOATS:
        if key in merged:
            values[key] = _number(key, merged[key], float)
    if "stop_grace" in merged:
        # 0 is allowed: end running jobs at once, as a stop did before drains.
        value = merged["stop_grace"]
        values["stop_grace"] = 0.0 if _is_zero(value) else _number("stop_grace", value, float)
    values.update(executor_values(merged.get("executor"), merged.get("executor_type")))
    settings = Settings(**values)
    if not settings.allow_root_jobs:
        if settings.job_user == "root":
            raise ConfigError("job_user is root: set allow_root_jobs = true if you mean it")
        if any(unix_user == "root" for _, unix_user in settings.run_as):
            raise ConfigError("run_as names root: set allow_root_jobs = true if you mean it")
    for description in settings.listen:
        check_endpoint(description, settings.allow_plaintext)
    return settings


EXECUTORS = ("local", "slurm")
_EXECUTOR_KEYS = frozenset(
    {"type", "partition", "account", "sbatch_options", "poll_interval", "shared_dir"}
)


def executor_values(table: object, cli_type: object) -> dict[str, Any]:
    """Settings from the config file's [executor] table and C{--executor}."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError("[executor] must be a table")
    unknown = sorted(set(table) - _EXECUTOR_KEYS)
    if unknown:
        raise ConfigError(f"[executor]: unknown setting(s) {', '.join(unknown)}")
    kind = cli_type if cli_type is not None else table.get("type", "local")
    if kind not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}")
    texts = {}
    for key in ("partition", "account", "shared_dir"):
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                raise ConfigError(f"[executor] {key} must be a non-empty string")
            texts[key] = table[key]
    extra = table.get("sbatch_options", [])
    if not isinstance(extra, list) or not all(isinstance(o, str) and o for o in extra):
        raise ConfigError("[executor] sbatch_options must be a list of strings")
    poll = table.get("poll_interval", 1.0)
    options = SlurmOptions(
        partition=texts.get("partition"),
        account=texts.get("account"),
        sbatch_options=tuple(extra),
        poll_interval=float(_number("poll_interval", poll, float)),
    )
    shared = texts.get("shared_dir")
    return {
        "executor": kind,
        "slurm": options,
        "slurm_shared_dir": None if shared is None else os.path.abspath(shared),
    }


def _run_as(value: object) -> frozenset[tuple[str, str]]:
    """From a TOML table {cmdd_user: [unix users]} or CLI items "cmdd_user=u1,u2"."""
    table: dict[str, Any] = {}
    if isinstance(value, list | tuple):
        for item in value:
            name, sep, listed = str(item).partition("=")
            if not sep or not name or not listed:
                raise ConfigError(f"run_as {item!r}: write CMDD_USER=UNIX_USER[,UNIX_USER]")
            table.setdefault(name, []).extend(listed.split(","))
    elif isinstance(value, dict):
        table = value
    else:
        raise ConfigError("run_as must map cmdd users to lists of Unix users")
    pairs: set[tuple[str, str]] = set()
    for name, users in table.items():
        if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
            raise ConfigError(f"run_as.{name} must be a list of Unix user names")
        pairs.update((name, user) for user in users)
    return frozenset(pairs)


def _networks(key: str, value: object) -> tuple[str, ...]:
    """CIDR networks (a string or a list of them), checked."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{key} must be a list of CIDR networks")
    try:
        return tuple(str(network) for network in parse_networks(items))
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _is_zero(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False


def _number(key: str, value: object, kind: type[int] | type[float]) -> int | float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(cast(Any, value))  # a str or a number; anything else raises below
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, not {value!r}") from None
    if kind is int and isinstance(value, float) and value != int(value):
        raise ConfigError(f"{key} must be a whole number, not {value!r}")
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigError(f"{key} must be more than 0, not {value!r}")
    return number


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split a Twisted endpoint string into kind, positional and keyword args.

    Follows Twisted's syntax: C{:} separates, C{\\} escapes the next character.
    """
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    kind, args, kwargs = parts[0].lower(), [], {}
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if sep:
            kwargs[name] = value
        else:
            args.append(part)
    return kind, args, kwargs


def _is_loopback(interface: str) -> bool:
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def check_endpoint(description: str, allow_plaintext: bool) -> None:
    """Refuse plaintext endpoints that other hosts could reach.

    TLS (C{ssl:}) and Unix sockets are always fine; plain TCP only on a
    loopback interface, unless the operator said C{--allow-plaintext}.
    """
    kind, args, kwargs = split_endpoint(description)
    if kind in ("ssl", "unix") or allow_plaintext:
        return
    if kind in ("tcp", "tcp6"):
        interface = kwargs.get("interface", args[1] if len(args) > 1 else "")
        if _is_loopback(interface):
            return
    raise ConfigError(
        f"{description!r} would serve plaintext HTTP beyond this host; "
        "use an ssl: endpoint, or pass --allow-plaintext if you mean it"
    )


def with_certificate(description: str, cert_path: str, key_path: str) -> str:
    """Point an C{ssl:} endpoint without its own key at the generated one."""
    kind, _, kwargs = split_endpoint(description)
    if kind != "ssl" or "privateKey" in kwargs:
        return description
    return (
        f"{description}:privateKey={quoteStringArgument(key_path)}"
        f":certKey={quoteStringArgument(cert_path)}"
    )


def needs_generated_certificate(descriptions: tuple[str, ...]) -> bool:
    """Whether any C{ssl:} endpoint lacks a configured key."""
    for description in descriptions:
        kind, _, kwargs = split_endpoint(description)
        if kind == "ssl" and "privateKey" not in kwargs:
            return True
    return False
