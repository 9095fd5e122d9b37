"""Helpers of the tests that give participants broker accounts of their own: a region's
services under ``MICROTE_IDENTITY=broker_user`` on a private RabbitMQ node, and the
``microte participants`` command against that node's management API."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from services.ensemble import Ensemble, purge_region
from services.participants.accounts import Management, accounts
from shared.runtime.settings import from_env
from tests.faults.servers import PrivateRabbit


def participants(rabbit: PrivateRabbit, region: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``microte participants ARGS --region REGION`` against the private node."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "participants", *args, "--region", region,
         "--management-url", rabbit.management_url],
        env={**os.environ, "MICROTE_AMQP_URL": rabbit.url}, capture_output=True, text=True, timeout=120)


def add(rabbit: PrivateRabbit, region: str, *args: str) -> str:
    """Adds an account; its password (printed once)."""
    done = participants(rabbit, region, "add", *args)
    assert done.returncode == 0, done.stderr
    found = re.search(r"^password: (\S+)$", done.stdout, re.M)
    assert found, done.stdout
    return found.group(1)


@contextlib.asynccontextmanager
async def region_on(rabbit: PrivateRabbit, prefix: str, services: tuple[str, ...], tmp_path: Path
                    ) -> AsyncIterator[str]:
    """A fresh region whose ``services`` trust the broker's user ids only; afterwards its
    accounts, queues and state are gone (the node is shared by a module's tests)."""
    region = prefix + secrets.token_hex(3)
    env = {"MICROTE_REGION": region, "MICROTE_IDENTITY": "broker_user", "MICROTE_LEDGER_URL": "memory://",
           "MICROTE_AMQP_URL": rabbit.url}
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(services)
        yield region
    finally:
        await forget(rabbit, ensemble, env)


async def forget(rabbit: PrivateRabbit, ensemble: Ensemble, env: dict[str, str], ids: tuple[str, ...] = ()) -> None:
    """Stops a region's services and deletes its accounts, queues and state."""
    ensemble.stop_all()
    admin = Management(rabbit.management_url)
    region = env["MICROTE_REGION"]
    for account in accounts(admin, region):
        admin.delete_user(account.participant_id)
    settings = from_env(env)
    await purge_region(settings.amqp_url, settings.redis_url, region, list(ids))
