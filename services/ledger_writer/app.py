"""ledger-writer: writes every ledger entry exactly once, in batches, acknowledging after commit."""

from __future__ import annotations

from services.ledger_writer.batcher import Batcher
from services.ledger_writer.guardian import GUARDIAN, StateGuardian
from services.ledger_writer.handlers import LedgerWriter
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.ledger import open_ledger
from shared.runtime.service import Service
from shared.runtime.settings import Settings

NAME, PORT = "ledger-writer", 9105


def create(settings: Settings) -> Service:
    svc = Service(NAME, settings, PORT)
    writer = LedgerWriter(svc)
    store = open_ledger(settings.ledger_url)
    keys = svc.keys
    svc.consume(
        {
            keys.all_to(k.ORDER_ACCEPTED): {t.OrderAccepted: writer.on_order_accepted},
            keys.all_to(k.ORDER_CANCELLED): {t.OrderCancelled: writer.on_order_cancelled},
            keys.all_to(k.READING_ACCEPTED): {t.ReadingAccepted: writer.on_reading_accepted},
            keys.fact(k.SLOT_CLEARED): {t.SlotCleared: writer.on_slot_cleared},
            keys.fact(k.SLOT_RECONCILED): {t.SlotReconciled: writer.on_slot_reconciled},
            # The round state's record, for a rebuild of Redis (shared.runtime.rebuild):
            keys.fact(k.ROUND_STARTED): {t.RoundStarted: writer.on_round_started},
            keys.all_to(k.MEMBERSHIP): {t.MemberJoined: writer.on_member_joined, t.MemberLeft: writer.on_member_left},
        },
        prefetch=1000,
    )

    async def open_store() -> None:
        await store.open()
        writer.attach(Batcher(store, after_commit=writer.after_commit))

    svc.on_start(open_store)
    svc.probe("ledger", store.ping)
    svc.needs_state = False  # it records; it keeps the round state's record, and rebuilds it if lost
    guardian = StateGuardian(svc, store, writer)
    svc.background(guardian.run, name=GUARDIAN)
    svc.on_stop(guardian.close)
    svc.on_stop(store.close)
    return svc
