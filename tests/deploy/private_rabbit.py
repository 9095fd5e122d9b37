"""A throw-away RabbitMQ node that boots from a definitions file, for the permission tests.

It never touches the machine's own broker (127.0.0.1:5672): it runs ``rabbitmq-server`` in
the foreground under its own node name, on free ports, with every file of its own (config,
env file, plugins, Mnesia, logs, HOME and so Erlang cookie) in a temporary folder, and is
stopped with SIGTERM to the process group it started.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scripts() -> Path:
    # Debian's /usr/sbin wrappers switch to the rabbitmq user; the scripts they call run as us.
    for candidate in ("/usr/lib/rabbitmq/bin", *sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"))):
        if Path(candidate, "rabbitmq-server").exists():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise BrokerUnavailable("rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)")
    return Path(found).parent


class PrivateRabbit:
    def __init__(self, definitions: Path) -> None:
        self.scripts = _scripts()
        self.tmp = Path(tempfile.mkdtemp(prefix="microte-deploy-rabbit-"))
        self.port = _free_port()
        self.dist_port = _free_port()
        self.node = f"mtdeploy-{secrets.token_hex(4)}@localhost"
        (self.tmp / "home").mkdir()
        (self.tmp / "rabbitmq-env.conf").write_text("")
        (self.tmp / "enabled_plugins").write_text("[].\n")
        (self.tmp / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"load_definitions = {definitions}\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        t = self.tmp
        return {
            **base,
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

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return s.recv(1) == b"\x01"
        except OSError:
            return False

    def start(self, timeout_s: float = 90.0) -> None:
        out = open(self.tmp / "server.out", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([str(self.scripts / "rabbitmq-server")], env=self.env(), stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise BrokerUnavailable(f"the private RabbitMQ node did not start:\n{tail}")
            time.sleep(0.25)
        # The AMQP listener opens before the boot-time definitions import has finished.
        while not self.rabbitmqctl("list_users", "--quiet").strip():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"the definitions were not imported:\n{self.log_tail()}")
            time.sleep(0.25)

    def rabbitmqctl(self, *args: str) -> str:
        done = subprocess.run([str(self.scripts / "rabbitmqctl"), "-n", self.node, *args], env=self.env(),
                              capture_output=True, text=True, timeout=60)
        return done.stdout if done.returncode == 0 else ""

    def url(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in [self.tmp / "server.out", *sorted((self.tmp / "log").glob("*.log"))]:
            if path.exists():
                text += f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)
