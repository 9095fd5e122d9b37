"""ledger-writer: writes every ledger entry exactly once, in batches, acknowledging after commit."""

from __future__ import annotations

from services.ledger_writer.batcher import Batcher
from services.ledger_writer.guardian import GUARDIAN, StateGuardian
from services.ledger_writer.handlers import LedgerWriter
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.ledger import open_ledger
from shared.runtime.region_settings import keep_market_settings
from shared.runtime.service import Batch, Service
from shared.runtime.settings import Settings

NAME, PORT = "ledger-writer", 9105


def create(settings: Settings) -> Service:
    svc = Service(NAME, settings, PORT)
    writer = LedgerWriter(svc)
    store = open_ledger(settings.ledger_url)
    keys = svc.keys
    # Whatever the queue holds goes into one transaction: one handler for every type.
    records = Batch(writer.on_records)
    svc.consume(
        {
            # Every acceptance, in one fact per drain of order-intake and meter-collector
            # (not the answers themselves: that would be a delivery per participant).
            keys.fact(k.ANSWERED): {t.RequestsAnswered: records},
            keys.fact(k.SLOT_CLEARED): {t.SlotCleared: records},
            # A slot's reconciliation, and with a true-up window its adjustments and its end:
            keys.fact(k.SLOT_RECONCILED): {t.SlotReconciled: records, t.SlotAdjusted: records,
                                           t.SlotFinalized: records},
            # The round state's record, for a rebuild of Redis (shared.runtime.rebuild):
            keys.fact(k.ROUND_STARTED): {t.RoundStarted: records},
            keys.all_to(k.MEMBERSHIP): {t.MemberJoined: records, t.MemberLeft: records},
        },
        prefetch=2000,
    )
    # Before the RequestsAnswered fact, the ledger-writer read the answers themselves.
    svc.retire([keys.all_to(kind) for kind in (k.ORDER_ACCEPTED, k.ORDER_CANCELLED, k.READING_ACCEPTED, k.BATCH)])

    async def open_store() -> None:
        await store.open()
        await keep_market_settings(store, settings)
        # No linger: the service hands over everything its queue held at once (a drain),
        # so waiting for more would only delay the commit, and the round, by the linger.
        writer.attach(Batcher(store, after_commit=writer.after_commit, linger_s=0.0))

    svc.on_start(open_store)
    svc.probe("ledger", store.ping)
    svc.needs_state = False  # it records; it keeps the round state's record, and rebuilds it if lost
    guardian = StateGuardian(svc, store, writer)
    svc.background(guardian.run, name=GUARDIAN)
    svc.on_stop(guardian.close)
    svc.on_stop(store.close)
    return svc
