"""order-intake: validates bids and asks, keeps the books and the membership."""

from __future__ import annotations

from services.order_intake.handlers import OrderIntake
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.service import Service
from shared.runtime.settings import Settings

NAME, PORT = "order-intake", 9102


def create(settings: Settings) -> Service:
    svc = Service(NAME, settings, PORT)
    intake = OrderIntake(svc)
    keys = svc.keys
    svc.consume(
        {
            keys.request(k.ORDER): {t.SubmitOrder: intake.on_order},
            keys.request(k.CANCEL): {t.CancelOrder: intake.on_cancel},
            keys.request(k.MEMBER): {t.JoinMarket: intake.on_join, t.LeaveMarket: intake.on_leave,
                                     t.Heartbeat: intake.on_heartbeat},
            keys.fact(k.SLOT_RECORDED): {t.SlotRecorded: intake.on_slot_recorded},
        },
        prefetch=128,
    )
    return svc
