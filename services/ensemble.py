"""Runs the five services as separate processes, for the demo and the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

SERVICES = ("order-intake", "matcher", "meter-collector", "ledger-writer", "clock")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ensemble:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        # The services of one ensemble share a service key that nobody else holds, so that
        # facts and answers from anyone else are refused (shared.runtime.trust).
        self.env = {"MICROTE_SERVICE_KEY": os.environ.get("MICROTE_SERVICE_KEY") or secrets.token_hex(32), **env}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def url(self, name: str, path: str = "/health") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def start(self, name: str, **extra: str) -> None:
        """Start a service; ``matcher#2`` names a second replica of the matcher."""
        port = self.ports.setdefault(name, free_port())
        env = {**os.environ, **self.env, **extra, "MICROTE_HTTP_PORT": str(port)}
        log = self._logs.get(name) or open(self.log_dir / f"{name.replace('#', '-')}.log", "ab")  # noqa: SIM115
        self._logs[name] = log
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", name.split("#")[0]],
                                            env=env, stdout=log, stderr=log)

    async def wait_healthy(self, name: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}")
            try:
                with urllib.request.urlopen(self.url(name), timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{name} not healthy within {timeout_s}s; see {self.log_dir / (name + '.log')}")

    async def start_all(self, names: tuple[str, ...] = SERVICES, **extra: str) -> None:
        for name in names:
            self.start(name, **extra)
        await asyncio.gather(*(self.wait_healthy(n) for n in names))

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str, timeout_s: float = 30.0) -> int:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        for log in self._logs.values():
            log.close()

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each running service, from /proc."""
        out = {}
        for name, proc in self.procs.items():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            out[name] = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return out


async def delete_queues(amqp_url: str, names: list[str]) -> None:
    """Delete these queues (a missing one is no error), each on a channel of its own."""
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in names:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()


async def purge_region(amqp_url: str, redis_url: str, region: str, participant_ids: list[str]) -> None:
    """Delete a region's queues and Redis keys (after a demo or between test runs)."""
    from redis.asyncio import Redis

    names = [f"microte.{region}.{n}" for n in (*SERVICES, "dead", "community")]
    names += [f"microte.{region}.participant.{p}" for p in participant_ids]
    await delete_queues(amqp_url, names)
    redis = Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"mt:\\{{{region}\\}}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
