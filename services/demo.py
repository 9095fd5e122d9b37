"""The main job: the five services as processes, a simulated community, then the report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.ensemble import Ensemble, purge_region
from services.html_report import write_html_report
from services.participants.community import Community, Tally, agent_ids
from services.participants.profiles import Household, community
from services.participants.scenario import community_record
from services.report import report
from shared.runtime.ledger import RecordBatch, open_ledger
from shared.runtime.settings import from_env

During = Callable[[Ensemble, Community], Awaitable[None]]
JOIN_TIMEOUT_S = 60
STOP_GRACE_S = 5.0  # interrupted: the services get this long to stop on SIGTERM, then SIGKILL


class ServicesFailed(RuntimeError):
    """The services did not start, or the community could not join them (their logs say why)."""


async def _start(ensemble: Ensemble, names: tuple[str, ...]) -> None:
    try:
        await ensemble.start_all(names)
    except (RuntimeError, TimeoutError) as exc:
        raise ServicesFailed(f"a service did not start: {exc}") from exc


def progress_interval(rounds: int) -> int:
    """Print progress every this many rounds: about twenty lines a run, every round of a short one."""
    return max(1, rounds // 20)


async def stop_now(ensemble: Ensemble, grace_s: float = STOP_GRACE_S) -> None:
    """Stop every service at once (the run was interrupted): SIGTERM to all, SIGKILL to any
    still running after ``grace_s``; then close their logs."""
    running = [p for p in ensemble.procs.values() if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in running) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for proc in running:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    ensemble.stop_all()  # every one has exited: this only closes the logs


def _quiet_broker_logs() -> None:
    """Once interrupted, the connections closing under the community are no news."""
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


async def simulate(env: dict[str, str], *, participants: int, seed: int, log_dir: Path,
                   during: During | None = None, replicas: int = 1, aggregators: int = 0,
                   requests: str = "single", homes: list[Household] | None = None) -> Tally:
    """The services as processes and a community, until the last round is recorded.

    The community: ``homes`` (a scenario's), else ``participants`` households drawn with ``seed``.
    ``during`` runs beside the simulation once the clock has started (fault injection).
    """
    settings = from_env(env)
    if settings.ledger_url.startswith("sqlite:///"):
        Path(settings.ledger_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    ensemble = Ensemble(env, log_dir)
    run: asyncio.Task[Tally] | None = None
    interrupted = False
    try:
        workers = ("order-intake", "matcher", "meter-collector", "ledger-writer")
        await _start(ensemble, tuple(f"{n}#{i}" if i > 1 else n for n in workers for i in range(1, replicas + 1)))
        sim = Community(settings.amqp_url, settings.region, homes or community(participants, seed),
                        settings.market.tariff.timezone, progress_every=progress_interval(settings.rounds),
                        total_rounds=settings.rounds,
                        duplicate=settings.duplicate_delivery, aggregators=aggregators, requests=requests)
        joined = asyncio.Event()
        run = asyncio.create_task(sim.run(joined))
        try:
            await asyncio.wait_for(joined.wait(), timeout=JOIN_TIMEOUT_S)
        except TimeoutError:
            raise ServicesFailed(f"the community did not join the market within {JOIN_TIMEOUT_S} s; "
                                 f"see the services' logs in {log_dir}") from None
        await _start(ensemble, tuple(f"clock#{i}" if i > 1 else "clock" for i in range(1, replicas + 1)))
        if during is not None:
            await during(ensemble, sim)
        return await run
    except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels the main task)
        interrupted = True
        _quiet_broker_logs()
        raise
    finally:
        if run is not None and not run.done():  # the community leaves first, then the services stop
            run.cancel()
            await asyncio.wait([run], timeout=STOP_GRACE_S)
        if interrupted:
            await stop_now(ensemble)
        else:
            ensemble.stop_all()


async def run_demo(env: dict[str, str], *, participants: int, seed: int, log_dir: Path, aggregators: int = 0,
                   requests: str = "round", homes: list[Household] | None = None,
                   about: tuple[str, str] = ("", "")) -> int:
    """``simulate``, then the report. The ledger keeps who the households were and what they
    owned (``about``: the scenario's name and description), for the HTML report: recorded
    once the run is over, so that a run that never started leaves no description behind
    for the next run of its region to inherit."""
    settings = from_env(env)
    homes = homes or community(participants, seed)
    participants = len(homes)
    print(f"microte demo: region {settings.region}, {participants} participants, {settings.rounds} rounds of "
          f"{settings.market.schedule.duration} s, ledger {settings.ledger_url}, logs in {log_dir}", file=sys.stderr)
    began = time.monotonic()
    try:
        tally = await simulate(env, participants=participants, seed=seed, log_dir=log_dir, aggregators=aggregators,
                               requests=requests, homes=homes)
    finally:
        # The ledger keeps all a report needs; the region's queues and round state can go.
        ids = [h.participant_id for h in homes] + agent_ids(aggregators)
        try:
            await asyncio.wait_for(purge_region(settings.amqp_url, settings.redis_url, settings.region, ids),
                                   timeout=30)
        except Exception as exc:  # the run's own outcome matters more; say what is left behind
            print(f"microte: the queues and round state of region {settings.region} were not deleted "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
    print(f"simulated {tally.rounds} rounds in {time.monotonic() - began:.1f} s; "
          f"rejections: {dict(tally.rejections) or 'none'}"
          + (f"; {tally.unanswered} requests never answered" if tally.unanswered else ""), file=sys.stderr)
    store = open_ledger(settings.ledger_url)
    await store.open()
    try:
        await store.write(RecordBatch(communities=[(settings.region, community_record(homes, *about, tally.charge))]))
        text, ok = await report(store, settings.market)
        page = Path("var") / "reports" / f"{settings.region}.html"
        try:
            await write_html_report(store, settings.market, ok, page)
            text += f"\n  HTML report (key figures and plots): {page}"
        except ImportError:
            text += "\n  no HTML report: it needs plotly (pip install 'microte[report]')"
    finally:
        await store.close()
    print(text)
    return 0 if ok else 1
