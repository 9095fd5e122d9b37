"""``open_ledger`` picks the back-end a URL names (no server needed: nothing is opened)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.market import Slot
from shared.runtime.ledger import MemoryLedgerStore, PostgresLedgerStore, RecordBatch, SqliteLedgerStore, open_ledger


def test_a_memory_url_names_the_in_memory_twin() -> None:
    assert isinstance(open_ledger("memory://"), MemoryLedgerStore)
    assert isinstance(open_ledger("memory://shared-name"), MemoryLedgerStore)


async def test_two_stores_on_one_named_memory_url_share_their_rows() -> None:
    one, two = open_ledger("memory://url-test-shared"), open_ledger("memory://url-test-shared")
    private = open_ledger("memory://")
    for store in (one, two, private):
        await store.open()
    await one.write(RecordBatch(reconciled=[("north", Slot(0, 60), 0)]))

    assert await two.reconciled_slots("north") == [Slot(0, 60)]
    assert await private.regions() == []


def test_three_slashes_name_a_relative_sqlite_file_and_four_an_absolute_one() -> None:
    relative, absolute = open_ledger("sqlite:///var/ledger.sqlite"), open_ledger("sqlite:////srv/ledger.sqlite")

    assert isinstance(relative, SqliteLedgerStore) and relative.path == Path("var/ledger.sqlite")
    assert isinstance(absolute, SqliteLedgerStore) and absolute.path == Path("/srv/ledger.sqlite")


def test_a_postgresql_url_names_the_postgresql_store() -> None:
    for url in ("postgresql://postgres@127.0.0.1:5432/microte", "postgres://u@h/db"):
        store = open_ledger(url)
        assert isinstance(store, PostgresLedgerStore) and store.dsn == url


@pytest.mark.parametrize("url", ["", "sqlite:///", "sqlite://relative.sqlite", "mysql://h/db", "ledger.sqlite"])
def test_an_unknown_or_empty_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_ledger(url)
