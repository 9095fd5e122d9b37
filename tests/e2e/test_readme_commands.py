"""Every command the README documents runs as a new user runs it, and exits 0.

The commands run in a fresh copy of the repository (the files git tracks, and new ones it
does not ignore; no `.venv`, no `var/`), from a shell with no virtual environment and no
MICROTE_* settings, against the real RabbitMQ, Redis and PostgreSQL. The README's first
command creates the copy's `.venv`, as it does on a new machine.

Every ```sh block of the README, every `make <verb>` and every `microte <command>` it
names must be covered here; `test_the_readme_documents_nothing_that_is_not_run_here`
fails for one that is not. Where a command is not run exactly as written, `SUBSTITUTED`
says what changes and why; what is not run at all is in `NOT_RUN`, with the reason. The
Docker and Kubernetes commands are outside this test (tests/deploy validates what they
use, offline). Bad values and their one-line errors: tests/unit/test_cli.py and
tests/e2e/test_cli_runs.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from services.ensemble import purge_region
from services.participants.community import agent_ids
from services.participants.profiles import community
from shared.runtime.settings import from_env
from tests.e2e.accounts import region_on
from tests.faults.servers import PrivateRabbit

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

NOT_RUN = {
    "make test": "it is the command that runs this test (CI runs it: .ci/run)",
    "make faults": "the fault suite, which `make test` runs in the same run as this test",
}
SUBSTITUTED = {
    "--region <region>": "the region of the block's first run (the README's placeholder)",
    "postgresql://postgres@127.0.0.1:5432/postgres": "a fresh database, dropped afterwards, so that the shared "
                                                     "server's `postgres` database gets no tables",
    "MICROTE_REGION=mine": "a region new to the shared Redis and RabbitMQ, deleted afterwards",
    "--region r1": "a fresh region on a private RabbitMQ node with the management plugin "
                   "(the local node has none), deleted afterwards",
}
TRADED = re.compile(r"energy traded peer to peer \(settled\)\s+([\d.]+) kWh")
REGION = re.compile(r"^microte report: region (\S+), (\d+) slots", re.M)


# --------------------------------------------------------------------------- the README


def sh_blocks(text: str) -> list[list[str]]:
    """Each ```sh block: its command lines, without comments."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    return [[re.sub(r"\s{2,}#.*$", "", line).rstrip() for line in block.splitlines()
             if line.strip() and not line.lstrip().startswith("#")] for block in blocks]


def starts(block: list[str], first: str) -> bool:
    """The block's first line is ``first``, or starts with it where it ends in ``=`` or a word."""
    return block[0] == first or (block[0].startswith(first) and first != "make simulate")


def block_starting(first: str) -> list[str]:
    found = [b for b in sh_blocks(README) if b and starts(b, first)]
    assert len(found) == 1, f"the README has {len(found)} ```sh blocks starting with {first!r}"
    return found[0]


BLOCKS = ("make simulate", "make simulate ARGS=", "export MICROTE_REGION=", "microte participants",
          "make bench ARGS=")


def test_the_readme_documents_nothing_that_is_not_run_here() -> None:
    for block in sh_blocks(README):
        assert any(starts(block, first) for first in BLOCKS), f"a README ```sh block this test does not run: {block}"
    quick = " ".join(block_starting("make bench ARGS="))
    for verb in set(re.findall(r"`make ([a-z-]+)", README)):
        if f"make {verb}" in NOT_RUN or verb in {"simulate", "unit", "lint"}:
            continue
        assert f"make {verb} ARGS=" in quick, f"`make {verb}` is in no block this test runs"
    run_here = {"serve", "simulate", "report", "demo", "participants", "bad-input", "replay-slot", "export", "compare",
                "--help", "--version", "<command>"}
    for command in set(re.findall(r"`microte ([a-z<>-]+)", README)):
        assert command in run_here, f"`microte {command}` is run by no test here"


# --------------------------------------------------------------------------- the copy


def user_env(**extra: str) -> dict[str, str]:
    """A new user's shell: no virtual environment, no microte settings."""
    env = {k: v for k, v in os.environ.items()  # (make test runs this: no make of ours around it either)
           if not k.startswith(("MICROTE_", "VIRTUAL_ENV", "PYTEST_", "PYTHONPATH", "MAKE", "MFLAGS"))}
    ours = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != ours)
    return {**env, **extra}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh copy of the working tree, as `git clone` would give it, uncommitted changes
    included."""
    root = tmp_path_factory.mktemp("clone") / "microte"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    # a repository, as a clone is (tests/unit asks git which files it tracks)
    git = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the working tree"]):
        subprocess.run(["git", *step], cwd=root, env=git, check=True, capture_output=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def sh(command: str, cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """``bash -c COMMAND`` in a process group of its own, as a terminal runs it; whatever it
    started (services in the background) does not outlive it."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=user_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`{command}` did not finish within {timeout} s\n--- stdout\n{out[-4000:]}\n--- stderr\n"
                    f"{err[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def ok(done: subprocess.CompletedProcess[str], command: str) -> str:
    assert done.returncode == 0, f"`{command}` exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}" \
                                 f"\n--- stderr\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def venv(checkout: Path) -> Path:
    """The copy's `.venv`, as the README's first command makes it (`make venv` is its first step)."""
    ok(sh("make venv", checkout, timeout=900), "make venv")
    return checkout / ".venv" / "bin"


def a_report_that_traded(out: str) -> str:
    """The demo's report: it traded, and its audit passed; its region."""
    traded, region = TRADED.search(out), REGION.search(out)
    assert traded and region, out[-3000:]
    assert Decimal(traded.group(1)) > 0, f"nothing traded:\n{out[-3000:]}"
    assert re.search(r"^  ledger invariants and re-derivation of \d+ slots, \d+ entries: PASS$", out, re.M), out[-3000:]
    return region.group(1)


async def purged(region: str, participants: int, aggregators: int = 1) -> None:
    settings = from_env({"MICROTE_REGION": region})
    ids = [h.participant_id for h in community(participants, 7)] + agent_ids(aggregators)
    await purge_region(settings.amqp_url, settings.redis_url, region, ids)


# --------------------------------------------------------------------------- the commands


def test_the_main_job_runs_from_a_fresh_clone(checkout: Path) -> None:
    """`make simulate`, the README's first command, on a copy without `.venv`."""
    assert block_starting("make simulate") == ["make simulate", "make test"]
    out = ok(sh("make simulate", checkout, timeout=1500), "make simulate")
    region = a_report_that_traded(out)
    assert f"HTML report (key figures and plots): var/reports/{region}.html" in out
    assert (checkout / "var" / "reports" / f"{region}.html").stat().st_size > 0


async def test_the_simulate_examples_trade_and_report_again(checkout: Path, venv: Path, pg_url: str) -> None:
    first, on_postgres, again, exported, compared, scenario = block_starting("make simulate ARGS=")
    region = a_report_that_traded(ok(sh(first, checkout, timeout=900), first))

    command = on_postgres.replace("postgresql://postgres@127.0.0.1:5432/postgres", pg_url)
    assert command != on_postgres
    a_report_that_traded(ok(sh(command, checkout, timeout=900), command))

    command = again.replace("<region>", region)
    assert command != again
    out = ok(sh(command, checkout, timeout=120), command)
    assert a_report_that_traded(out) == region

    command = exported.replace("<region>", region)
    assert command != exported
    written = ok(sh(command, checkout, timeout=120), command).split()
    assert written == [f"var/exports/{region}/slots.parquet", f"var/exports/{region}/households.parquet"]
    assert all((checkout / path).stat().st_size > 0 for path in written)

    out = ok(sh(compared, checkout, timeout=900), compared)
    page = re.search(r"^comparison of midpoint, equal_price, pay_as_bid, uniform: (\S+)$", out, re.M)
    assert page and (checkout / page.group(1)).stat().st_size > 0, out[-2000:]

    # the scenario's households, rule and round length; the command line's rounds
    done = sh(scenario, checkout, timeout=900)
    region = a_report_that_traded(out := ok(done, scenario))
    assert re.search(rf"^microte report: region {region}, 8 slots, rule pay_as_bid$", out, re.M), out[-3000:]
    assert f"region {region}, 100 participants, 8 rounds of 900 s," in done.stderr, done.stderr[-3000:]


@pytest.fixture
async def by_hand_region() -> AsyncIterator[str]:
    region = "readme" + secrets.token_hex(3)
    yield region
    await purged(region, participants=5)


def test_the_services_run_by_hand(checkout: Path, venv: Path, by_hand_region: str) -> None:
    block = block_starting("export MICROTE_REGION=")
    script = "\n".join(block).replace("MICROTE_REGION=mine ", f"MICROTE_REGION={by_hand_region} ")
    assert by_hand_region in script
    try:  # well within the test's own timeout, so that a hang says where it hung
        out = ok(sh(f"set -e\n{script}", checkout, timeout=240), "the by-hand block")
    except (AssertionError, pytest.fail.Exception) as exc:
        logs = "".join(f"\n--- {p.name}, last lines\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
                       for p in sorted((checkout / "var").glob("*.log")))
        raise AssertionError(f"{exc}{logs}") from None
    assert a_report_that_traded(out) == by_hand_region
    assert "simulation done: 30 rounds" in out

    bad = ok(sh(f".venv/bin/microte bad-input --region {by_hand_region}", checkout, timeout=60), "bad-input")
    assert f"no bad input to region {by_hand_region}" in bad
    # `replay-slot` replays a held slot; a slot that was recorded is not held, and it says so
    slot = re.search(r"MICROTE_START_TIME=(\d+)", script)  # the first round's slot
    assert slot, script
    replay = sh(f".venv/bin/microte replay-slot --region {by_hand_region} --slot {slot.group(1)}", checkout,
                timeout=60)
    assert replay.returncode == 1
    assert replay.stderr.strip() == f"microte: slot {slot.group(1)} of region {by_hand_region} is not held: " \
                                    "nothing to replay"


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    with PrivateRabbit(management=True) as server:
        yield server


async def test_the_participant_accounts_commands(checkout: Path, venv: Path, rabbit: PrivateRabbit,
                                                 tmp_path: Path) -> None:
    block = block_starting("microte participants")
    async with region_on(rabbit, "readme", ("ledger-writer", "order-intake"), tmp_path) as region:
        for line in block:
            command = ".venv/bin/" + line.replace("--region r1", f"--region {region}")
            assert region in command
            out = ok(sh(command, checkout, timeout=120, MICROTE_AMQP_URL=rabbit.url,
                        MICROTE_MANAGEMENT_URL=rabbit.management_url), command)
            if " list " in command:
                assert re.search(r"^agg1\s+aggregator", out, re.M) and re.search(r"^h002\s+household\s+yes\s+agg1",
                                                                               out, re.M), out


def test_the_quick_benchmarks(checkout: Path, venv: Path) -> None:
    for command in block_starting("make bench ARGS="):
        out = ok(sh(command, checkout, timeout=600), command)
        assert out.strip(), command


@pytest.mark.parametrize("verb", ["make unit", "make lint"])
def test_the_other_verbs(checkout: Path, venv: Path, verb: str) -> None:
    assert f"`{verb}`" in README
    ok(sh(verb, checkout, timeout=1200), verb)


def test_every_command_explains_itself(checkout: Path, venv: Path) -> None:
    version = ok(sh(".venv/bin/microte --version", checkout, timeout=60), "microte --version")
    assert re.fullmatch(r"microte \d+\.\d+\.\d+\S*\n", version), version
    top = ok(sh(".venv/bin/microte --help", checkout, timeout=60), "microte --help")
    listed = top.split("positional arguments:", 1)[1].split("options:", 1)[0]
    commands = re.findall(r"^    ([a-z-]+)", listed, re.M)
    assert {"serve", "simulate", "demo", "report", "participants"} <= set(commands), top
    for command in commands:
        out = ok(sh(f".venv/bin/microte {command} --help", checkout, timeout=60), f"microte {command} --help")
        assert out.startswith(f"usage: microte {command}"), out
