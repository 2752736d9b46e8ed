"""C{twistd cmdd}: command-line options and the service tree.

The one composition root: only this module touches the global reactor.
C{makeService} only builds objects; directories, the certificate and the
listening sockets are made in C{startService} (after twistd daemonizes).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from cmdd import __version__
from cmdd.accounts import Accounts
from cmdd.api import CmddAPI
from cmdd.auth import AuthGate, FailureThrottle, RunAsPolicy, make_portal
from cmdd.codec import Meta
from cmdd.config import (
    ConfigError,
    Settings,
    build_settings,
    load_toml,
    needs_generated_certificate,
    split_endpoint,
    with_certificate,
)
from cmdd.console import ConsoleResource
from cmdd.history import History, Retention
from cmdd.jobhost import StartupError, make_executor
from cmdd.joblog import log_transition
from cmdd.jobs import State
from cmdd.journal import DataDirLocked, JournalCorrupt, JournalWriter, lock_data_dir
from cmdd.leftovers import end_leftovers, instance_of
from cmdd.lifecycle import JournalCheck, Readiness, fail_start, install_stop_signals
from cmdd.listening import ListeningFile, RecordingEndpoint, hold_accepting
from cmdd.manager import JobManager
from cmdd.metrics import DaemonMetrics
from cmdd.reloading import apply_site_limits, limits_of, reload_settings
from cmdd.restore import restore
from cmdd.runat import RunAtService
from cmdd.scheduleroutes import schedule_refusal
from cmdd.schedules import ScheduleService
from cmdd.slurm import SlurmExecutor
from cmdd.slurmhost import make_slurm_executor
from cmdd.spawnerlink import SpawnerLink
from cmdd.spool import IOWorker
from cmdd.store import JobStore
from cmdd.tls import ReloadableTLS, ensure_self_signed, fingerprint
from cmdd.users import UserError
from cmdd.web import make_site
from cmdd.webhookapi import WebhookRoutes, make_deliverer

log = Logger()

#: How often the users file is checked for changes (a stat call).
USERS_POLL_SECONDS = 2.0


_SETTING_OPTIONS = (
    "data-dir",
    "max-running",
    "max-queued",
    "max-scheduled",
    "max-schedules",
    "max-output-bytes",
    "max-body-bytes",
    "body-budget-bytes",
    "max-connections",
    "receive-timeout",
    "idle-timeout",
    "default-timeout",
    "kill-grace",
    "stop-grace",
    "journal-fsync",
    "journal-compact-bytes",
    "retain-days",
    "retain-jobs",
    "client-ca",
    "job-user",
    "job-sandbox",
    "webhook-timeout",
    "webhook-max-age",
    "webhook-max-in-flight",
    "webhook-per-destination",
)


class Options(usage.Options):
    """Options of C{twistd cmdd}; each can also be set in the config file."""

    synopsis = "[options]"
    longdesc = (
        "Run commands for HTTPS REST clients. Settings come from defaults, "
        "then --config FILE (TOML), then these options."
    )
    optFlags = [
        ["allow-plaintext", None, "Allow plain TCP endpoints on non-loopback interfaces."],
        [
            "journal-recover",
            None,
            "Move damaged journal lines to journal.quarantine and start anyway.",
        ],
        ["job-private-tmp", None, "Give jobs their own empty /tmp (bubblewrap)."],
        ["job-no-network", None, "Jobs get no network, loopback included (bubblewrap)."],
        ["allow-root-jobs", None, "Allow job_user or run-as users to be root."],
    ]
    optParameters = [
        ["config", "c", None, "TOML config file."],
        ["data-dir", "d", None, "Data directory [default: ./cmdd-data]."],
        ["max-running", None, None, "Jobs running at once [default: 4 x CPUs, at least 64]."],
        ["max-queued", None, None, "Jobs waiting before POST answers 503 [default: 10000]."],
        ["max-scheduled", None, None, "Jobs waiting for their run_at [default: 100000]."],
        ["max-schedules", None, None, "Recurring schedules [default: 10000]."],
        ["max-output-bytes", None, None, "Bytes kept per job and stream [default: 16 MiB]."],
        ["max-body-bytes", None, None, "Largest request body [default: 1 MiB]."],
        ["body-budget-bytes", None, None, "Body bytes in memory, all connections [32 MiB]."],
        ["max-connections", None, None, "Open client connections [default: 1024]."],
        ["receive-timeout", None, None, "Seconds a request may take to arrive [default: 30]."],
        ["idle-timeout", None, None, "Seconds an idle connection stays open [default: 60]."],
        ["default-timeout", None, None, "Seconds before a job without timeout is killed."],
        ["kill-grace", None, None, "Seconds between SIGTERM and SIGKILL [default: 5]."],
        [
            "stop-grace",
            None,
            None,
            "On SIGTERM/SIGINT, seconds running jobs may take to finish before "
            "they are cancelled [default: 30].",
        ],
        [
            "journal-fsync",
            None,
            None,
            "always: answer 202 only once the job is on disk (default); "
            "never: UNSAFE, a power loss can lose acknowledged jobs.",
        ],
        [
            "journal-compact-bytes",
            None,
            None,
            "Compact the journal when it grows past this size [default: 64 MiB].",
        ],
        ["client-ca", None, None, "Require client certificates signed by this CA (PEM)."],
        ["retain-days", None, None, "At compaction, drop finished jobs older than this."],
        ["retain-jobs", None, None, "At compaction, keep only this many newest finished jobs."],
        ["job-user", None, None, "Unix user jobs run as when cmdd runs as root [default: nobody]."],
        ["executor", None, None, "Where jobs run: local (default) or slurm (see [executor])."],
        [
            "job-sandbox",
            None,
            None,
            "auto: bubblewrap when it works (default); bubblewrap: required; off.",
        ],
        ["webhook-timeout", None, None, "Seconds a callback attempt may take [default: 15]."],
        [
            "webhook-max-age",
            None,
            None,
            "Seconds after its event a failing callback is given up [default: 86400].",
        ],
        ["webhook-max-in-flight", None, None, "Callback requests at once [default: 64]."],
        [
            "webhook-per-destination",
            None,
            None,
            "Callback requests at once per host and port [default: 4].",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["run-as"] = []
        self["job-writable"] = []
        self["webhook-allow"] = []
        self["webhook-deny"] = []

    def opt_webhook_allow(self, network: str) -> None:
        """CIDR network callbacks may connect to (repeatable) [default: any]."""
        self["webhook-allow"].append(network)

    def opt_webhook_deny(self, network: str) -> None:
        """CIDR network callbacks may not connect to (repeatable; wins over allow)."""
        self["webhook-deny"].append(network)

    def opt_job_writable(self, path: str) -> None:
        """A path an unprivileged daemon's sandboxed jobs may write (repeatable)."""
        self["job-writable"].append(path)

    def opt_run_as(self, mapping: str) -> None:
        """CMDD_USER=UNIX_USER[,UNIX_USER]: allow running jobs as those users (repeatable)."""
        self["run-as"].append(mapping)

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve on, repeatable [default: ssl:8443:interface=127.0.0.1]."""
        self["listen"].append(description)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"cmdd {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        """Parse, or exit 2 with one line on stderr (not twistd's usage text)."""
        try:
            super().parseOptions(options)
        except _BadConfig as e:
            _exit_usage(f"cmdd: bad configuration: {e}")
        except usage.UsageError as e:
            _exit_usage(f"cmdd: {e} (twistd cmdd --help lists the options)")

    def postOptions(self) -> None:
        file_values: dict[str, Any] = {}
        try:
            if self["config"]:
                file_values = load_toml(self["config"])
            overrides = {key.replace("-", "_"): self[key] for key in _SETTING_OPTIONS}
            overrides["listen"] = self["listen"] or None
            overrides["run_as"] = self["run-as"] or None
            overrides["job_writable_paths"] = self["job-writable"] or None
            overrides["webhook_allow"] = self["webhook-allow"] or None
            overrides["webhook_deny"] = self["webhook-deny"] or None
            overrides["allow_plaintext"] = True if self["allow-plaintext"] else None
            overrides["journal_recover"] = True if self["journal-recover"] else None
            overrides["job_private_tmp"] = True if self["job-private-tmp"] else None
            overrides["job_network"] = False if self["job-no-network"] else None
            overrides["allow_root_jobs"] = True if self["allow-root-jobs"] else None
            overrides["executor_type"] = self["executor"]
            self["settings"] = build_settings(file_values, overrides)
        except ConfigError as e:
            raise _BadConfig(str(e)) from None
        config = self["config"]
        # SIGHUP builds the settings again the same way (cmdd.reloading).
        self["reread"] = lambda: build_settings(load_toml(config) if config else {}, overrides)


class _BadConfig(usage.UsageError):
    """A setting's value is wrong (as opposed to an unknown option)."""


def _exit_usage(line: str) -> NoReturn:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    raise SystemExit(2)


class _ManagerCounts:
    """The manager's queue as the metrics read it (the manager is made after
    the metrics, which the journal needs first)."""

    def __init__(self, service: CmddService) -> None:
        self._service = service

    @property
    def running_count(self) -> int:
        return self._service.manager.running_count

    @property
    def queued_count(self) -> int:
        return self._service.manager.queued_count


class CmddService(MultiService):
    """The daemon: prepares the data directory, runs jobs, serves HTTP.

    Stops in order: listeners first (no new jobs), then running jobs
    (TERM, grace, KILL), then the I/O thread.
    """

    def __init__(
        self, settings: Settings, reactor: Any, reread: Callable[[], Settings] | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self._reread = reread
        self._reactor = reactor
        self.readiness = Readiness()
        self.io = IOWorker(reactor)
        self.store = JobStore()
        self.metrics = DaemonMetrics(
            self.store,
            _ManagerCounts(self),
            auth_failures=lambda: self.gate.failures,
            deliveries=lambda: self.deliverer,
        )
        self.journal = JournalWriter(
            reactor,
            settings.journal_path,
            fsync=settings.journal_fsync == "always",
            on_write=self.metrics.fsync_seconds.observe,
        )
        self.readiness.checks.append(lambda: None if self.slurm is None else self.slurm.unavailable)
        self.readiness.checks.append(
            JournalCheck(self.journal, lambda: Meta(reactor.seconds(), self.store.peek_next_id()))
        )
        self.history = History(
            self.store,
            self.journal,
            reactor,
            compact_bytes=settings.journal_compact_bytes,
            retention=Retention(days=settings.retain_days, jobs=settings.retain_jobs),
            remove_outputs=lambda ids: self.manager.remove_outputs(ids),
        )
        # The executor is made in startService, once the sandbox is checked.
        self.spawner: SpawnerLink | None = None
        self.slurm: SlurmExecutor | None = None
        self.manager = JobManager(
            self.history,
            None,
            self.io,
            reactor,
            settings.output_dir,
            limits_of(settings),
        )
        self.run_at = RunAtService(self.manager, reactor)
        self.schedules = ScheduleService(
            self.manager, reactor, max_schedules=settings.max_schedules
        )
        self.accounts = Accounts(settings.data_dir, reactor, self.io.run)
        run_as = RunAsPolicy(settings.run_as, daemon_is_root=os.geteuid() == 0)
        self.schedules.owner_check = lambda schedule: schedule_refusal(
            schedule, self.accounts.users(), run_as
        )
        self.schedules.generation_of = lambda owner: getattr(
            self.accounts.users().get(owner), "generation", None
        )
        self.manager.host = socket.gethostname()
        self.webhook_secrets, self.webhook_sender, self.deliverer = make_deliverer(
            settings, reactor, self.history, self.io.run, deferToThread
        )
        self.api = CmddAPI(
            self.manager,
            deferToThread,
            self.accounts,
            run_as,
            readiness=self.readiness,
            metrics=self.metrics,
            webhooks=WebhookRoutes(self.deliverer, self.webhook_secrets),
            schedules=self.schedules,
        )
        portal = make_portal(self.accounts.users, self.accounts.book_view, reactor, deferToThread)
        self.gate = AuthGate(
            self.api.app.resource(),
            portal,
            FailureThrottle(reactor),
            self.accounts.users,
            client_certificates=settings.client_ca is not None,
            console=ConsoleResource(),
        )
        self.site = make_site(self.gate, settings.max_body_bytes, settings.idle_timeout)
        apply_site_limits(self.site, settings)
        self._users_watch = LoopingCall(self.accounts.reload_users_if_changed)
        self._users_watch.clock = reactor
        self._listeners: list[StreamServerEndpointService] = []
        self._listening = ListeningFile(settings.data_dir)
        self._tls: list[ReloadableTLS] = []

    def startService(self) -> None:
        """Start everything, or exit 1 with one line on stderr (never half-started)."""
        try:
            self._start()
        except BaseException as e:  # every failed start ends the same way
            if not isinstance(e, SystemExit | CannotListenError | StartupError | OSError):
                log.failure("start-up failed", Failure(e))
            for listener in self._listeners:
                listener.stopService()
            self._listeners = []
            fail_start(e)

    def _start(self) -> None:
        settings = self.settings
        _private_directory(settings.data_dir)
        os.makedirs(settings.output_dir, mode=0o700, exist_ok=True)
        try:
            self._lock = lock_data_dir(settings.data_dir)
            executor: Any
            if settings.executor == "slurm":
                executor, how = make_slurm_executor(self._reactor, settings, self.io.run)
                executor.on_submitted = self.manager.record_submitted
                self.slurm = executor
            else:
                executor, self.spawner, how = make_executor(
                    self._reactor, settings, _key_files(settings.listen)
                )
            # Before replay: an executor that can re-adopt running jobs does.
            self.manager.executor = executor
            self.accounts.load()
            self.webhook_secrets.load()
            # Bind the listeners before any thread or process runs, so that a
            # port in use stops the start with nothing to undo. Nothing is
            # served before the reactor runs, i.e. before history is back.
            bound = self._listen()
            adopted = self._restore_history()
            # Counted and logged from now on: replayed events are not news.
            self.metrics.watch()
            self.store.add_listener(log_transition)
            hold_accepting(bound, adopted)
        except (DataDirLocked, JournalCorrupt, UserError) as e:
            raise SystemExit(str(e)) from None
        log.info("{how}", how=how)
        if self.spawner is not None:
            self.spawner.start()
        self.io.start()
        self._users_watch.start(USERS_POLL_SECONDS, now=False)
        signal.signal(signal.SIGHUP, self._sighup)
        super().startService()
        self.manager.startService()
        self.run_at.startService()
        self.schedules.startService()
        self._reactor.callWhenRunning(self._now_running)
        self._reactor.callWhenRunning(self.deliverer.start)
        log.info(
            "cmdd {version} serving on {listen}; data in {data_dir}",
            version=__version__,
            listen=", ".join(settings.listen),
            data_dir=settings.data_dir,
        )

    def _listen(self) -> list[RecordingEndpoint]:
        descriptions = self.settings.listen
        if needs_generated_certificate(descriptions):
            cert, key, created = ensure_self_signed(self.settings.tls_dir)
            with open(cert, "rb") as cert_file:
                print_ = fingerprint(cert_file.read())
            log.info(
                "{what} TLS certificate {cert} (SHA-256 fingerprint {fingerprint})",
                what="generated self-signed" if created else "using self-signed",
                cert=cert,
                fingerprint=print_,
            )
            descriptions = tuple(with_certificate(d, cert, key) for d in descriptions)
        self._listening.remove()
        bound = []
        for description in descriptions:
            kind = split_endpoint(description)[0]
            endpoint = RecordingEndpoint(self._endpoint(description), kind)
            listener = StreamServerEndpointService(endpoint, self.site)
            # Fail start-up loudly (port in use, bad key) instead of serving nothing.
            listener._raiseSynchronously = True
            listener.startService()
            self._listeners.append(listener)
            bound.append(endpoint)
        self._listening.write(bound)
        return bound

    def _now_running(self) -> None:
        install_stop_signals(self._reactor, self._stop_signal, self._stop_again)
        self.readiness.ready()

    def _stop_signal(self, name: str) -> None:
        log.info(
            "{signal}: stopping; running jobs may finish for up to {grace} s "
            "(send it again to end them now)",
            signal=name,
            grace=self.settings.stop_grace,
        )
        self.readiness.draining()
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass

    def _stop_again(self, name: str) -> None:
        log.info("{signal} again: ending the running jobs now", signal=name)
        self.manager.stop_now(f"{name} received twice")

    def _restore_history(self) -> Deferred[Any]:
        # Synchronous on purpose: this runs before the reactor does, and no
        # request may be served before every job is back (nor before the
        # jobs that were running are recorded lost: the returned Deferred).
        settings = self.settings
        report = restore(
            settings.journal_path,
            self.store,
            self.history.load,
            recover=settings.journal_recover,
        )
        self.journal.seq = report.last_seq
        self.journal.open()
        # Without a snapshot, a big journal compacts (and gets one) soon.
        self.history.note_compacted(report.snapshot_bytes)
        self._end_leftovers()
        adopted = self.manager.adopt_history()
        log.info(
            "journal {path}: {records} records, {jobs} jobs, next id {next_id}",
            path=settings.journal_path,
            records=report.records,
            jobs=len(self.store),
            next_id=self.store.peek_next_id(),
        )
        if report.quarantined:
            # Rewrite the journal without the quarantined lines.
            self.history.compact()
        return adopted

    def _end_leftovers(self) -> None:
        # Jobs recorded as running are about to be marked lost; whatever of
        # them outlived the last daemon (see cmdd.leftovers) must not run on.
        running = [job.id for job in self.store.oldest_first() if job.state is State.RUNNING]
        killed = end_leftovers(instance_of(self.settings.data_dir), running)
        for job_id, pids in sorted(killed.items()):
            log.warn(
                "job {job_id}: killed {count} process(es) the previous daemon left "
                "running (pids {pids}); the job is lost",
                job_id=job_id,
                count=len(pids),
                pids=" ".join(map(str, sorted(pids))),
            )

    def _endpoint(self, description: str) -> Any:
        """An endpoint for C{description}; C{ssl:} ones get cmdd's hardened,
        reloadable TLS settings instead of Twisted's defaults."""
        kind, args, kwargs = split_endpoint(description)
        if kind != "ssl":
            return serverFromString(self._reactor, description)
        try:
            tls = ReloadableTLS(
                kwargs["privateKey"],
                kwargs.get("certKey", kwargs["privateKey"]),
                kwargs.get("extraCertChain"),
                self.settings.client_ca,
            )
        except (OSError, ValueError, SSL.Error) as e:
            raise SystemExit(f"cmdd: cannot load TLS files for {description!r}: {e}") from None
        self._tls.append(tls)
        port = int(args[0] if args else kwargs["port"])
        return SSL4ServerEndpoint(
            self._reactor,
            port,
            tls,
            backlog=int(kwargs.get("backlog", 50)),
            interface=kwargs.get("interface", ""),
        )

    def _sighup(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes; do the work in the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Re-read what an operator may change without a restart (SIGHUP)."""
        log.info("SIGHUP: reloading users, TLS certificates and limits")
        self.accounts.reload_users()
        if self._reread is not None:
            self.settings = reload_settings(self.settings, self._reread, self._apply_limits)
        for tls in self._tls:
            try:
                tls.reload()
            except (OSError, ValueError, SSL.Error) as e:
                log.error(
                    "keeping the previous certificate for {path}: {why}",
                    path=tls.cert_path,
                    why=str(e),
                )

    def _apply_limits(self, settings: Settings) -> None:
        self.manager.set_limits(limits_of(settings))
        apply_site_limits(self.site, settings)

    async def _stop(self) -> None:
        # The drain: POSTs get 503 and /readyz 503 while running jobs finish
        # (listeners stay open so clients can still read their jobs), then
        # the listeners close, the spawner goes and the journal is flushed.
        self.readiness.draining()
        if self._users_watch.running:
            self._users_watch.stop()
        self.run_at.stopService()
        self.schedules.stopService()
        await self.manager.stopService()
        # Callbacks of jobs that ended in the drain went out meanwhile; the
        # rest are owed in the journal and go out after the next start.
        self.deliverer.stop()
        await self.webhook_sender.close()
        for listener in self._listeners:
            await maybeDeferred(listener.stopService)
        self._listeners = []
        self._listening.remove()
        if self.spawner is not None:
            await self.spawner.stop()
        if self.slurm is not None:
            self.slurm.stop()
        await super().stopService()
        await self.journal.close()
        self.io.stop()
        log.info("stopped: every job's outcome is in the journal")

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


def _private_directory(path: str) -> None:
    """Create the data directory 0700, or make an existing one 0700."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = os.stat(path).st_mode & 0o777
    if mode != 0o700:
        os.chmod(path, 0o700)
        log.warn(
            "data directory {path} was mode {mode:o}; made it 0700",
            path=path,
            mode=mode,
        )


def _key_files(descriptions: tuple[str, ...]) -> list[str]:
    """TLS key files named by endpoints (hidden from jobs)."""
    keys = []
    for description in descriptions:
        kind, _, kwargs = split_endpoint(description)
        if kind == "ssl" and "privateKey" in kwargs:
            keys.append(kwargs["privateKey"])
    return keys


def makeService(options: Options) -> IService:
    """Build the daemon's service from parsed options (twistd calls this)."""
    from twisted.internet import reactor

    return CmddService(options["settings"], reactor, options.get("reread"))
