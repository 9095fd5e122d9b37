"""Private RabbitMQ, Redis and PostgreSQL servers for the fault suite.

Each server runs on free loopback ports with all its data in its own temporary folder,
so that a test may stop, kill and restart it without touching the machine's shared
servers (127.0.0.1:5672, :6379, :5432), which other work uses.

Every server process runs in its own process group (``start_new_session``); ``kill()``
SIGKILLs the whole group and ``stop()`` ends with that too, so no child (Erlang's
``erl_child_setup``, PostgreSQL's backends) outlives it. Three safety nets make sure
nothing is left behind: ``close()`` (context manager, fixture finaliser), an ``atexit``
hook, and a watchdog shell per server that SIGKILLs the group and removes the folder
within a second of the test process dying, even by SIGKILL.

The blocking methods have ``a``-prefixed twins (``astart``, ``astop``, ``arestart``,
``akill``) that run in a worker thread, so that a fault hook can take a server down while
the simulated community keeps running on the event loop.

Timings measured on this machine (2 cores; RabbitMQ 3.10.8 on Erlang/OTP 25, Redis 7.0,
PostgreSQL 15):

- ``PrivateRedis``: start 0.01-0.05 s, restart 0.05-0.1 s.
- ``PrivateRabbit``: first start (a new Mnesia database) 4-6 s; stop 1.5-3 s;
  restart (stop + start, data kept) 5-8 s; the AMQP port answers only once durable
  queues have been recovered.
- ``PrivatePostgres``: ``initdb`` 1-2 s, start 0.2-0.5 s, restart 0.3-0.6 s.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any, ClassVar, Self

_TEMP_PREFIX = "mtfault-"
_LIVE: set[PrivateServer] = set()
_USED_PORTS: set[int] = set()
_KILL = shutil.which("kill", path="/usr/bin:/bin") or "/bin/kill"  # procps: dash's builtin cannot kill a group


def free_port() -> int:
    """A loopback port nobody listens on now, never one this process handed out before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _USED_PORTS:
            _USED_PORTS.add(port)
            return port


def port_answers(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, process group, start time) of every live (not zombie) process, from /proc."""
    table = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ... (19: starttime)
        if fields[0] != "Z":
            table[int(stat.split("/")[2])] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return table


def group_pids(pgid: int) -> list[int]:
    """Processes (not zombies) whose process group is ``pgid``."""
    return sorted(pid for pid, (_, group, _) in _proc_table().items() if group == pgid)


def tree(leader: int) -> dict[int, int]:
    """The leader's process group and all its descendants (some, like PostgreSQL's backends and
    Erlang's ``erl_child_setup``, make process groups of their own): pid -> start time."""
    table = _proc_table()
    found = {pid for pid, (_, group, _) in table.items() if group == leader}
    if leader in table:
        found.add(leader)
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return {pid: table[pid][2] for pid in found}


def live(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies waiting for their parent do not count)."""
    table = _proc_table()
    return [pid for pid in pids if pid in table]


def _alive(known: dict[int, int]) -> list[int]:
    table = _proc_table()
    return sorted(pid for pid, started in known.items() if pid in table and table[pid][2] == started)


class ServerError(RuntimeError):
    pass


class PrivateServer:
    """One server process on loopback, its data in a temporary folder."""

    kind: ClassVar[str] = "server"
    user: str | None = None  # the OS user the server runs as (None: ours)

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{self.kind}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._known: dict[int, int] = {}  # pid -> start time of every process of the server seen
        self._log: IO[bytes] | None = None
        self._closed = False
        self.timings: dict[str, float] = {}  # last duration of start, stop, restart
        _LIVE.add(self)
        # The safety net for a test process that dies without running atexit (SIGKILL).
        self._watchdog = subprocess.Popen(
            ["sh", "-c", 'while kill -0 "$0" 2>/dev/null; do sleep 1; done; '
                         'if [ -f "$1/.pgid" ]; then "$2" -KILL -- "-$(cat "$1/.pgid")" 2>/dev/null; sleep 2; fi; '
                         'rm -rf "$1"', str(os.getpid()), str(self.tmp), _KILL],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # --- what each server defines -------------------------------------------------------

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        """Whether the server answers requests (a quick, non-blocking probe)."""
        raise NotImplementedError

    def _graceful_signal(self) -> int:
        return signal.SIGTERM

    @property
    def url(self) -> str:
        raise NotImplementedError

    # --- life cycle -----------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.tmp / f"{self.kind}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pgid(self) -> int | None:
        return None if self.proc is None else self.proc.pid  # start_new_session: the leader's pid

    def pids(self) -> list[int]:
        """Every live process of the server: its process group and every descendant."""
        if self.pgid is None:
            return []
        self._known.update(tree(self.pgid))
        return _alive(self._known)

    def _spawn(self) -> None:
        if self._closed:
            raise ServerError(f"{self.kind} is closed")
        if self.running:
            raise ServerError(f"{self.kind} is already running")
        self._log = self._log or open(self.log_path, "ab")  # noqa: SIM115
        extra: dict[str, Any] = {}
        if self.user is not None and os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen(self._argv(), env=self._env(), cwd=self.tmp, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, **extra)
        (self.tmp / ".pgid").write_text(str(self.proc.pid))

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"{self.kind} exited with {self.proc.returncode} while starting; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.kind} did not answer within {timeout_s} s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the server and wait until it answers."""
        began = time.monotonic()
        self._spawn()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        self.timings["start"] = time.monotonic() - began

    def _reap(self, timeout_s: float) -> None:
        """Wait for the leader, then SIGKILL whatever is left of its processes."""
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)
        deadline = time.monotonic() + 10
        while left := sorted(set(_alive(self._known)) | set(group_pids(self.proc.pid))):
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise ServerError(f"{self.kind}: processes {left} survive SIGKILL")
            time.sleep(0.02)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._known.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.tmp / ".pgid").unlink()

    def stop(self, timeout_s: float = 60.0) -> None:
        """A clean shutdown (data flushed as the server's settings say); waits for it."""
        if self.proc is None:
            return
        began = time.monotonic()
        if self.proc.poll() is None:
            self.pids()  # remember every process, to reap those that outlive the leader
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self._graceful_signal())
        self._reap(timeout_s)
        self.timings["stop"] = time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL the server and all its processes, as a crash or an OOM kill would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGSTOP)  # no new children from here on
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._reap(10)

    def restart(self, down_s: float = 0.0, timeout_s: float = 120.0) -> None:
        """Clean stop, ``down_s`` seconds down, start again on the same port with the same data."""
        began = time.monotonic()
        self.stop()
        if down_s:
            time.sleep(down_s)  # the fault itself: how long the server stays down
        self.start(timeout_s)
        self.timings["restart"] = time.monotonic() - began

    def ensure_running(self) -> None:
        if not self.running:
            if self.proc is not None:
                self._reap(1)
            self.start()

    async def astart(self, timeout_s: float = 120.0) -> None:
        await asyncio.to_thread(self.start, timeout_s)

    async def astop(self, timeout_s: float = 60.0) -> None:
        await asyncio.to_thread(self.stop, timeout_s)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def arestart(self, down_s: float = 0.0, timeout_s: float = 120.0) -> None:
        await asyncio.to_thread(self.restart, down_s, timeout_s)

    def close(self) -> None:
        """Stop the server (SIGKILL if it does not stop in time) and remove its folder."""
        if self._closed:
            return
        try:
            if self.running:
                try:
                    self.stop(timeout_s=20)
                except Exception:
                    self.kill()
            elif self.proc is not None:
                self._reap(1)
        finally:
            self._closed = True
            _LIVE.discard(self)
            if self._log is not None:
                self._log.close()
            self._watchdog.kill()
            self._watchdog.wait(5)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()  # what a failed start left behind: its process, its folder
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} {'running' if self.running else 'stopped'} in {self.tmp}>"


@atexit.register
def _close_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


def _run(argv: list[str], *, env: dict[str, str] | None = None, user: str | None = None,
         timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    extra: dict[str, Any] = {}
    if user is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                          **extra)
    if check and done.returncode != 0:
        raise ServerError(f"{' '.join(argv)} failed with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


# --- Redis -----------------------------------------------------------------------------


class PrivateRedis(PrivateServer):
    """``redis-server`` in the foreground; ``aof=False`` keeps nothing across a restart.

    ``stop()`` sends SIGTERM, which with AOF on fsyncs the append-only file first (like
    ``SHUTDOWN``; with ``--save ""`` no RDB is written either way).
    """

    kind = "redis"

    def __init__(self, aof: bool = True) -> None:
        self.aof = aof
        super().__init__()

    def _argv(self) -> list[str]:
        return [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
                "--dir", str(self.tmp), "--daemonize", "no", "--protected-mode", "no", "--logfile", ""]

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")  # "-LOADING ..." while it reads the AOF
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> str:
        """One command through ``redis-cli`` (for set-up and checks, not for speed)."""
        return _run([shutil.which("redis-cli") or "redis-cli", "-p", str(self.port), *args]).stdout.strip()


# --- RabbitMQ --------------------------------------------------------------------------


def _rabbit_scripts() -> Path:
    # Debian's /usr/sbin wrappers switch to the rabbitmq user (and its cookie); the scripts
    # they call run as any user, with our HOME and so our own Erlang cookie.
    for candidate in ("/usr/lib/rabbitmq/bin", *glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin")):
        if Path(candidate, "rabbitmq-server").exists():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise ServerError("rabbitmq-server is not installed")
    return Path(found).parent


class PrivateRabbit(PrivateServer):
    """A second RabbitMQ node on this machine, ``mtfault-<hex>@localhost``.

    Runs ``rabbitmq-server`` in the foreground with every file of its own in the temporary
    folder: its own env file (so /etc/rabbitmq/rabbitmq-env.conf's NODENAME is not read),
    its own config (so /etc/rabbitmq/rabbitmq.conf's listener on 5672 is not read), an
    empty plugin list (no management listener on 15672), its own Mnesia, logs, pid file
    and HOME (so its own Erlang cookie). It registers with the machine's epmd (4369) under
    its own name. ``stop()`` sends SIGTERM to the start script, which stops the node
    cleanly (as ``rabbitmqctl stop`` does); durable queues and persistent messages are
    kept across ``restart()``.
    """

    kind = "rabbitmq"

    def __init__(self, definitions: Path | None = None, *, management: bool = False, mqtt: bool = False) -> None:
        """``definitions``: a RabbitMQ definitions file to boot from (users, permissions);
        such a node has no guest user. ``management``: with the management plugin, its HTTP
        API on a port of its own (``management_url``). ``mqtt``: with the MQTT plugin on a
        port of its own (``mqtt_port``), publishing into the exchange ``microte`` as the
        compose stack's broker does, and no anonymous logins."""
        super().__init__()
        self.definitions = definitions
        self.management_port = free_port() if management else None
        self.mqtt_port = free_port() if mqtt else None
        plugins = [p for p, on in (("rabbitmq_management", management), ("rabbitmq_mqtt", mqtt)) if on]
        self.node = f"mtfault-{secrets.token_hex(4)}@localhost"
        self.dist_port = free_port()
        self.scripts = _rabbit_scripts()
        (self.tmp / "home").mkdir()
        (self.tmp / "rabbitmq-env.conf").write_text("")
        (self.tmp / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (self.tmp / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
            + (f"load_definitions = {definitions}\n" if definitions else "")
            + (f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
               if management else "")
            + (f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\nmqtt.exchange = microte\n"
               "mqtt.allow_anonymous = false\nmqtt.vhost = /\n" if mqtt else "")
        )

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        t = self.tmp
        return {
            **env,
            "HOME": str(t / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(t / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(t / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(t / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(t / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(t / "mnesia"),
            "RABBITMQ_LOG_BASE": str(t / "log"),
            "RABBITMQ_PID_FILE": str(t / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def _argv(self) -> list[str]:
        return [str(self.scripts / "rabbitmq-server")]

    def _ready(self) -> bool:
        """The AMQP port answers the protocol header with Connection.Start (a method frame),
        and the boot-time definitions, if any, are imported (the listener opens first)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                if s.recv(1) != b"\x01":
                    return False
        except OSError:
            return False
        for port in (self.management_port, self.mqtt_port):
            if port is None:
                continue
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        if self.definitions is None:
            return True
        try:
            return bool(self.rabbitmqctl("list_users", "--quiet").strip())
        except ServerError:
            return False

    @property
    def url(self) -> str:
        return self.url_for("guest", "guest")

    @property
    def management_url(self) -> str:
        assert self.management_port is not None, "started without the management plugin"
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def url_for(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    def log_tail(self, lines: int = 30) -> str:
        node_log = self.tmp / "log" / f"{self.node}.log"
        tail = super().log_tail(lines)
        if node_log.exists():
            tail += "\n--- node log ---\n" + "\n".join(node_log.read_text(errors="replace").splitlines()[-lines:])
        return tail

    def rabbitmqctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl -n <node> ARGS`` against this node; its standard output."""
        return _run([str(self.scripts / "rabbitmqctl"), "-n", self.node, *args], env=self._env(),
                    timeout_s=timeout_s).stdout

    def _json(self, *args: str) -> list[dict[str, Any]]:
        out = self.rabbitmqctl(*args, "--formatter", "json", "--quiet")
        return list(json.loads(out or "[]"))

    def queues(self) -> list[dict[str, Any]]:
        """Every queue: name, messages, messages_ready, consumers, arguments, durable."""
        return self._json("list_queues", "name", "messages", "messages_ready", "consumers", "arguments", "durable")

    def consumers(self) -> list[dict[str, Any]]:
        return self._json("list_consumers", "queue_name", "channel_pid", "consumer_tag", "ack_required",
                          "prefetch_count", "active", "arguments")

    def add_user(self, name: str, password: str, *, configure: str = ".*", write: str = ".*", read: str = ".*",
                 topic_write: str | None = None, topic_read: str | None = None) -> str:
        """A broker user with permissions (and topic permissions on ``microte`` if given); its URL."""
        self.rabbitmqctl("add_user", name, password)
        self.rabbitmqctl("set_permissions", name, configure, write, read)
        if topic_write is not None or topic_read is not None:
            self.rabbitmqctl("set_topic_permissions", name, "microte", topic_write or ".*", topic_read or ".*")
        return f"amqp://{name}:{password}@127.0.0.1:{self.port}/"


# --- PostgreSQL ------------------------------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServerError("PostgreSQL (initdb) is not installed")
    return Path(initdb).parent


class PrivatePostgres(PrivateServer):
    """A private cluster: ``initdb`` (trust auth) and ``postgres`` in the foreground.

    ``initdb`` refuses root, so when we are root the folder is given to the ``postgres``
    OS user and both run as it (``subprocess`` switches user; no ``su`` in between, so
    the pid we hold is the postmaster's). ``fsync=off``: durability against a machine
    crash is not what these tests are about. ``synchronous_commit`` stays on, so a commit
    has written its WAL to the kernel before it returns and a killed server loses nothing
    committed (with ``synchronous_commit=off`` it loses the last commits; see the test).
    ``stop()`` is a fast shutdown (SIGINT: clients are disconnected, as ``pg_ctl stop -m
    fast``); ``kill()`` SIGKILLs the postmaster and its backends (crash recovery on start).
    """

    kind = "postgres"

    def __init__(self, database: str = "ledger") -> None:
        super().__init__()
        self.bin = _pg_bin()
        self.database = database
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.tmp, entry.pw_uid, entry.pw_gid)
        self.data = self.tmp / "data"
        self._initialised = False

    def _argv(self) -> list[str]:
        return [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.tmp),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                "-c", "max_connections=200", "-c", "logging_collector=off"]

    def _graceful_signal(self) -> int:
        return signal.SIGINT  # fast shutdown; SIGTERM (smart) would wait for every client to leave

    def _ready(self) -> bool:
        done = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              check=False, timeout=10)
        return done.returncode == 0

    def start(self, timeout_s: float = 120.0) -> None:
        if not self._initialised:
            began = time.monotonic()
            _run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C"], user=self.user, timeout_s=120)
            self.timings["initdb"] = time.monotonic() - began
            self._initialised = True
            super().start(timeout_s)
            self.sql(f'CREATE DATABASE "{self.database}"')
        else:
            super().start(timeout_s)

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_of(self.database)

    def sql(self, statement: str, database: str = "postgres") -> str:
        return _run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                     "-p", str(self.port), "-U", "postgres", "-d", database, "-c", statement]).stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or "ledger_" + secrets.token_hex(4)
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


__all__ = ["PrivatePostgres", "PrivateRabbit", "PrivateRedis", "PrivateServer", "ServerError", "free_port",
           "group_pids", "live", "port_answers", "tree"]
