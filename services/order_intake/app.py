"""order-intake: validates bids and asks, keeps the books and the membership."""

from __future__ import annotations

from services.order_intake.handlers import OrderIntake
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.service import Batch, Service
from shared.runtime.settings import Settings

NAME, PORT = "order-intake", 9102


def create(settings: Settings) -> Service:
    svc = Service(NAME, settings, PORT)
    intake = OrderIntake(svc)
    keys = svc.keys
    # Orders, cancels and batches drained together are one run: one Redis script, one
    # wait for confirms (OrderIntake.on_requests).
    requests = Batch(intake.on_requests, checks_state=True)
    svc.consume(
        {
            keys.request(k.ORDER): {t.SubmitOrder: requests},
            keys.request(k.CANCEL): {t.CancelOrder: requests},
            keys.request(k.BATCH): {t.SubmitBatch: requests},
            keys.request(k.MEMBER): {t.JoinMarket: Batch(intake.on_joins), t.LeaveMarket: intake.on_leave,
                                     t.Heartbeat: intake.on_heartbeat},
            keys.fact(k.SLOT_RECORDED): {t.SlotRecorded: intake.on_slot_recorded},
        },
        # A window of 16,384 deliveries, passes of at most 512, and at most MICROTE_FAIR_SHARE
        # of one sender's in a pass: a flood is held back here, behind the others' requests.
        prefetch=16384, run_limit=512, per_sender=settings.fair_share,
    )
    return svc
