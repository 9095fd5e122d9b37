"""Two regions at once on the same servers: each keeps its own market and its own ledger."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from shared.runtime.audit import audit
from shared.runtime.settings import from_env
from tests.e2e.conftest import opened, run, sim_env


async def test_two_regions_run_side_by_side_without_touching_each_other(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared-ledger.sqlite'}"  # one ledger database for both, on purpose
    regions = ["north" + secrets.token_hex(3), "south" + secrets.token_hex(3)]
    envs = [sim_env(r, url, 6) for r in regions]
    await asyncio.gather(*(run(env, tmp_path / r) for env, r in zip(envs, regions, strict=True)))
    store = await opened(url)
    try:
        assert sorted(await store.regions()) == sorted(regions)
        for env in envs:
            result = await audit(store, from_env(env).market)
            assert result.problems == []
            assert result.slots == 6 and result.settlements > 0
    finally:
        await store.close()
