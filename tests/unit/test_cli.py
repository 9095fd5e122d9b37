"""The ``microte`` command without servers: every bad value ends in one line on stderr
starting ``microte: ``, a non-zero exit (2 for a bad argument) and no traceback; --version
and --help; the pricing rule reaches the services' environment; progress shows for short
runs; an interrupted run's services are stopped at once. (With the servers: tests/e2e/test_cli_runs.py.)"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services import cli
from services.demo import ServicesFailed, progress_interval, stop_now
from services.ensemble import Ensemble
from services.participants.community import Community
from services.participants.profiles import community
from shared.messages import encode
from shared.messages import types as t
from shared.runtime.ledger import RecordBatch, open_ledger


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's stderr, checked to be one line starting ``microte: `` without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("microte: "), err
    return lines[0]


@pytest.mark.parametrize(("argv", "says"), [
    (["demo", "--participants", "-5", "--rounds", "0"], "--participants: must be at least 1, got -5"),
    (["demo", "--participants", "0"], "--participants: must be at least 1, got 0"),
    (["demo", "--participants", "many"], "'many' is not a whole number"),
    (["demo", "--rounds", "0"], "--rounds: must be at least 1, got 0"),
    (["demo", "--rounds", "-3"], "--rounds: must be at least 1, got -3"),
    (["demo", "--round-seconds", "0"], "--round-seconds: must be at least 1"),
    (["demo", "--aggregators", "-1"], "--aggregators: must be at least 0"),
    (["demo", "--start", "yesterday"], "e.g. 2026-06-21T11:00"),
    (["demo", "--start", "2026-06-21T11:00+02:00"], "has a UTC offset"),
    (["demo", "--timezone", "Mars/Olympus"], "'Mars/Olympus' is not a known IANA time zone"),
    (["demo", "--ledger", "/some/plain/path.sqlite"], "use sqlite:///path or postgresql://"),
    (["demo", "--ledger", "sqlite:///"], "names no file"),
    (["demo", "--ledger", "memory://"], "use sqlite:///path or postgresql://"),
    (["demo", "--rule", "cheapest"], "invalid choice: 'cheapest'"),
    (["demo", "--region", "a.b"], "'a.b' is not a region id"),
    (["simulate", "--participants", "0"], "--participants: must be at least 1"),
    (["simulate", "--rounds", "-1"], "--rounds: must be at least 0"),
    (["report", "--ledger", "somewhere.sqlite"], "is not a ledger URL"),
    (["report", "--rule", "free"], "invalid choice: 'free'"),
    (["replay-slot", "--region", "r1", "--slot", "soon"], "--slot"),
    (["bad-input", "--region", "r1", "--day", "yesterday"], "use YYYY-MM-DD"),
    ([], "required: command"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_a_bad_argument_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                says: str) -> None:
    assert cli.main(argv) == 2
    assert says in one_line_error(capsys)


def test_a_ledger_in_a_missing_folder_is_refused_and_no_folder_made(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--ledger", "sqlite:///nonexistent/dir/x.sqlite"]) == 2
    line = one_line_error(capsys)
    assert "does not exist" in line and "nonexistent/dir" in line
    assert not (tmp_path / "nonexistent").exists()
    # The same from MICROTE_LEDGER_URL, named as such; an absolute path too.
    monkeypatch.setenv("MICROTE_LEDGER_URL", f"sqlite:///{tmp_path}/no/such/ledger.sqlite")
    assert cli.main(["demo"]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert not (tmp_path / "no").exists()


def test_the_default_ledger_may_make_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no var/ here: the default ledger's folder is the project's own
    cli.check_sqlite(cli.DEFAULT_LEDGER, must_exist=False, may_create_folder=True)
    with pytest.raises(cli.CliError) as refused:
        cli.check_sqlite(cli.DEFAULT_LEDGER, must_exist=False)
    assert refused.value.code == 2
    cli.check_sqlite(f"sqlite:///{tmp_path}/ledger.sqlite", must_exist=False)  # an existing folder: fine


def test_a_bad_ledger_from_the_environment_names_the_variable(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROTE_LEDGER_URL", "/var/lib/ledger.sqlite")
    assert cli.main(["demo"]) == 2
    line = one_line_error(capsys)
    assert line.startswith("microte: MICROTE_LEDGER_URL: ") and "use sqlite:///path or postgresql://" in line


def test_report_refuses_a_ledger_that_is_not_there_and_creates_none(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "ledger.sqlite"
    assert cli.main(["report", "--ledger", f"sqlite:///{missing}", "--region", "r1"]) == 2
    assert "no ledger at" in one_line_error(capsys)
    assert not (tmp_path / "gone").exists()
    assert cli.main(["replay-slot", "--ledger", f"sqlite:///{missing}", "--region", "r1", "--slot", "60"]) == 2
    assert "no ledger at" in one_line_error(capsys)


def test_report_on_a_region_the_ledger_does_not_have_lists_those_it_has(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Not an all-zero report that passes its audit: an error that names the regions there are."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"

    async def write(*regions: str) -> None:
        store = open_ledger(url)
        await store.open()
        try:
            for region in regions:
                await store.write(RecordBatch(rounds=[(region, 60, 1, 60_000)]))
        finally:
            await store.close()

    asyncio.run(write())
    assert cli.main(["report", "--ledger", url, "--region", "r9"]) == 1
    assert one_line_error(capsys) == f"microte: region r9 has no run in the ledger {url}; it has no region yet"
    asyncio.run(write("north", "south"))
    assert cli.main(["report", "--ledger", url, "--region", "r9"]) == 1
    assert one_line_error(capsys) == (f"microte: region r9 has no run in the ledger {url}; "
                                      "its regions: north, south")
    assert cli.main(["report", "--ledger", url, "--region", "north"]) == 0
    assert "microte report: region north" in capsys.readouterr().out


def test_a_bad_setting_in_the_environment_is_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MICROTE_PRICING_RULE", "bogus")
    assert cli.main(["demo", "--ledger", f"sqlite:///{tmp_path}/l.sqlite"]) == 2
    assert "bogus" in one_line_error(capsys)
    monkeypatch.delenv("MICROTE_PRICING_RULE")
    monkeypatch.setenv("MICROTE_AMQP_URL", "localhost:5672")
    assert cli.main(["demo", "--ledger", f"sqlite:///{tmp_path}/l.sqlite"]) == 2
    assert "is not an AMQP URL" in one_line_error(capsys)
    monkeypatch.delenv("MICROTE_AMQP_URL")
    monkeypatch.setenv("MICROTE_SERVICE_KEY", "short")  # every service would refuse it, one after the other
    assert cli.main(["demo", "--ledger", f"sqlite:///{tmp_path}/l.sqlite"]) == 2
    assert "MICROTE_SERVICE_KEY must be a secret" in one_line_error(capsys)


def test_unreachable_servers_are_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Port 1 on loopback refuses every connection: no server is needed to see it."""
    ledger = f"sqlite:///{tmp_path}/l.sqlite"
    monkeypatch.setenv("MICROTE_AMQP_URL", "amqp://guest:secret@127.0.0.1:1/")
    assert cli.main(["demo", "--ledger", ledger]) == 1
    line = one_line_error(capsys)
    assert "RabbitMQ is not reachable" in line and "secret" not in line  # the password is not shown
    assert not (tmp_path / "l.sqlite").exists()  # nothing ran
    assert cli.main(["simulate", "--rounds", "3"]) == 1
    assert "RabbitMQ is not reachable" in one_line_error(capsys)
    monkeypatch.setenv("MICROTE_REDIS_URL", "redis://127.0.0.1:1/0")
    assert cli.main(["bad-input", "--region", "r1"]) == 1
    assert "Redis is not reachable" in one_line_error(capsys)
    assert cli.main(["report", "--ledger", "postgresql://postgres:pw@127.0.0.1:1/x", "--region", "r1"]) == 1
    line = one_line_error(capsys)
    assert "the ledger database postgresql://postgres:***@127.0.0.1:1/x is not reachable" in line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"microte {importlib.metadata.version('microte')}\n"


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help_names_the_environment(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for name in ("MICROTE_AMQP_URL", "MICROTE_REDIS_URL", "MICROTE_LEDGER_URL", "MICROTE_PRICING_RULE",
                 "Configuration"):
        assert name in out


def test_demo_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 20)", "(default: 1440;", "(default: 60)", "(default: 1,", "(default: 7)",
                    "(default: 2026-06-21T00:00)", "(default: America/Vancouver)",
                    "(default: MICROTE_PRICING_RULE, else midpoint)",
                    "(default: MICROTE_LEDGER_URL, else sqlite:///var/ledger.sqlite)"):
        assert default in out


def test_every_option_states_its_default() -> None:
    top = cli.parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {action.option_strings[0]}" for name, sub in commands.items() for action in sub._actions
               if action.option_strings and action.dest != "help"
               and not any(word in (action.help or "") for word in ("default", "required"))]
    assert missing == []


def args_of(*argv: str) -> argparse.Namespace:
    """The options as ``demo`` and ``compare`` use them: the command line, a scenario, defaults."""
    args = cli.parser().parse_args(list(argv))
    return cli.with_scenario(args) if hasattr(args, "scenario") else args


def test_the_rule_reaches_the_services_environment() -> None:
    environ = {"MICROTE_PRICING_RULE": "equal_price", "MICROTE_AMQP_URL": "amqp://u:p@h:5672/", "HOME": "/x"}
    env = cli.demo_env(args_of("demo", "--rule", "pay_as_bid", "--region", "r9"), environ)
    assert env["MICROTE_PRICING_RULE"] == "pay_as_bid"
    assert env["MICROTE_REGION"] == "r9" and env["MICROTE_AMQP_URL"] == "amqp://u:p@h:5672/" and "HOME" not in env
    # Without --rule, the environment's rule stands.
    assert cli.demo_env(args_of("demo"), environ)["MICROTE_PRICING_RULE"] == "equal_price"
    assert "MICROTE_PRICING_RULE" not in cli.demo_env(args_of("demo"), {})
    # The report and the replay re-derive with the rule given.
    assert cli._ledger_env(args_of("report", "--rule", "pay_as_bid"))["MICROTE_PRICING_RULE"] == "pay_as_bid"
    assert cli._ledger_env(args_of("replay-slot", "--region", "r1", "--slot", "0", "--rule", "equal_price")
                           )["MICROTE_PRICING_RULE"] == "equal_price"


def test_the_start_is_local_market_time() -> None:
    env = cli.demo_env(args_of("demo", "--start", "2026-06-21T11:00", "--timezone", "America/Vancouver"), {})
    assert env["MICROTE_START_TIME"] == "1782064800"  # 18:00 UTC
    assert env["MICROTE_TIMEZONE"] == "America/Vancouver"


def test_a_password_is_never_printed() -> None:
    assert cli.redact("amqp://guest:wrong@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert cli.redact("postgresql://postgres@127.0.0.1:1/x") == "postgresql://postgres@127.0.0.1:1/x"


def test_a_service_that_does_not_start_is_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def fine(url: str) -> None:
        return None

    async def failed(*args: object, **kwargs: object) -> int:
        raise ServicesFailed("a service did not start: matcher exited with 1; see var/logs/r/matcher.log")

    for check in ("check_amqp", "check_redis", "check_postgres"):
        monkeypatch.setattr(cli, check, fine)
    monkeypatch.setattr("services.demo.run_demo", failed)
    assert cli.main(["demo", "--ledger", f"sqlite:///{tmp_path}/l.sqlite"]) == 1
    assert one_line_error(capsys) == ("microte: a service did not start: matcher exited with 1; "
                                      "see var/logs/r/matcher.log")


def test_an_interrupt_is_one_line_and_exit_130(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async def fine(url: str) -> None:
        return None

    async def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    for check in ("check_amqp", "check_redis", "check_postgres"):
        monkeypatch.setattr(cli, check, fine)
    monkeypatch.setattr("services.demo.run_demo", interrupted)
    assert cli.main(["demo", "--ledger", f"sqlite:///{tmp_path}/l.sqlite", "--region", "r7"]) == 130
    assert one_line_error(capsys) == (f"microte: interrupted; services stopped; what ran so far is region r7 in the "
                                      f"ledger sqlite:///{tmp_path}/l.sqlite (microte report --region r7 --ledger "
                                      f"sqlite:///{tmp_path}/l.sqlite)")


# --- progress ---------------------------------------------------------------------------------

class Delivery:
    def __init__(self, message: t.Message) -> None:
        self.body = encode(message)

    @contextlib.asynccontextmanager
    async def process(self) -> AsyncIterator[None]:
        yield


def round_started(start: int, final: int) -> t.RoundStarted:
    def slot(at: int) -> t.Slot:
        return t.Slot(at, at + 60)
    return t.RoundStarted(region="r1", fence=1, started_at_ms=0, duration=60, close_steps=2, timezone="UTC",
                          current_round=slot(start), last_settle=slot(start + 60), next_settle=slot(start + 120),
                          grid=[], final_round_start=final)


async def progress_lines(rounds: int, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The progress a demo of ``rounds`` rounds prints (its community's watch, fed the round starts)."""
    sim = Community("amqp://unused", "r1", community(2, 7), "UTC", progress_every=progress_interval(rounds))
    final = 60 * rounds
    for i in range(1, rounds + 1):
        await sim._watch(Delivery(round_started(60 * i, final)))  # type: ignore[arg-type]
    return [line for line in capsys.readouterr().err.splitlines() if "market time" in line]


async def test_a_short_run_shows_progress_every_round(capsys: pytest.CaptureFixture[str]) -> None:
    lines = await progress_lines(5, capsys)
    assert [line.split()[1] for line in lines] == ["1", "2", "3", "4", "5"]


async def test_a_long_run_shows_about_twenty_lines_first_and_last_round_too(
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = await progress_lines(1440, capsys)
    shown = [int(line.split()[1]) for line in lines]
    assert 20 <= len(shown) <= 22
    assert shown[0] == 1 and shown[-1] == 1440
    lines = await progress_lines(39, capsys)  # below 40 rounds nothing was shown before
    assert [int(line.split()[1]) for line in lines] == list(range(1, 40))


# --- stopping ---------------------------------------------------------------------------------

async def test_an_interrupted_run_stops_a_service_that_ignores_sigterm(tmp_path: Path) -> None:
    ensemble = Ensemble({}, tmp_path)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
               "time.sleep(120)"
    polite = "import time; print('up', flush=True); time.sleep(120)"
    for name, code in (("clock", stubborn), ("matcher", polite)):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        ensemble.procs[name] = proc
    began = time.monotonic()
    await stop_now(ensemble, grace_s=1.0)
    assert time.monotonic() - began < 5
    assert ensemble.procs["matcher"].returncode == -15  # SIGTERM
    assert ensemble.procs["clock"].returncode == -9  # SIGKILL, after the grace
    for proc in ensemble.procs.values():
        assert proc.stdout is not None
        proc.stdout.close()


def test_compare_runs_one_region_per_rule_and_strategy_named_by_what_differs(tmp_path: Path) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text("from services.participants.strategies import Baseline\nclass Mine(Baseline):\n    pass\n")
    by_rule = cli.compare_runs(args_of("compare", "--rules", "midpoint,uniform"), "cmp1")
    assert by_rule == [("midpoint", "midpoint", "cmp1-midpoint", None), ("uniform", "uniform", "cmp1-uniform", None)]
    by_strategy = cli.compare_runs(args_of("compare", "--rules", "equal_price", "--strategies",
                                           f"zic,bandit,{plugin}:Mine"), "cmp2")
    assert by_strategy == [("zic", "equal_price", "cmp2-equal_price-zic", "zic"),
                           ("bandit", "equal_price", "cmp2-equal_price-bandit", "bandit"),
                           ("Mine3", "equal_price", "cmp2-equal_price-Mine3", f"{plugin}:Mine")]
    both = cli.compare_runs(args_of("compare", "--rules", "midpoint,uniform", "--strategies", "zic,bandit"), "c")
    assert [label for label, _, _, _ in both] == ["midpoint / zic", "midpoint / bandit", "uniform / zic",
                                                  "uniform / bandit"]
    assert all(cli._REGION.match(region) for _, _, region, _ in by_strategy + both)


@pytest.mark.parametrize(("value", "says"), [
    ("zic,zic", "give distinct strategies"),
    ("greedy", "'greedy' is no strategy"),
])
def test_compare_refuses_a_strategy_it_cannot_run(capsys: pytest.CaptureFixture[str], value: str, says: str) -> None:
    assert cli.main(["compare", "--strategies", value]) == 2
    assert says in one_line_error(capsys)


def test_compare_takes_its_rules_from_the_option_else_the_scenario_else_all_four(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text("[market]\nrule = 'equal_price'\n")
    rules = [[rule for _, rule, _, _ in cli.compare_runs(args_of("compare", *argv), "c")] for argv in (
        ["--rules", "uniform"], [str(scenario)], [str(scenario), "--rules", "midpoint"], [])]
    assert rules == [["uniform"], ["equal_price"], ["midpoint"], ["midpoint", "equal_price", "pay_as_bid", "uniform"]]
