"""Every Prometheus metric microte exports, defined once, named by Prometheus conventions.

Base units: seconds, joules (1 Wh = 3600 J, exact), dollars. Labels never carry
participant or order ids, so cardinality stays bounded by region x a fixed set.
Each service registers only the metrics it updates, on its own registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

JOULES_PER_WH = 3600

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ROUND = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    # order-intake
    orders: Counter
    order_ack_latency: Histogram
    book_orders: Gauge
    cancels: Counter
    members_active: Gauge
    # matcher
    clearing_duration: Histogram
    matched_energy: Counter
    slot_matched_energy: Gauge
    slot_price: Gauge
    settlements: Counter
    # meter-collector
    readings: Counter
    readings_missing: Counter
    reconciliation_duration: Histogram
    grid_energy: Counter
    # ledger-writer
    ledger_write_duration: Histogram
    ledger_backlog: Gauge
    ledger_rows: Counter
    ledger_energy_imbalance: Gauge
    ledger_money_imbalance: Gauge
    slots_recorded: Counter
    # clock
    rounds: Counter
    round_duration: Histogram
    round_timeouts: Counter
    round_start: Gauge
    clock_fence: Gauge
    clock_leader: Gauge
    # every service
    dead_letters: Counter
    rejected_requests: Counter
    stale_fence: Counter
    forged_messages: Counter
    dependency_up: Gauge
    outage_retries: Counter
    dead_letter_overflow: Counter
    loop_restarts: Counter
    handler_failures: Counter
    slots_held: Counter
    state_rebuilds: Counter
    messages_received: Counter
    messages_published: Counter
    batch_duration: Histogram
    batch_size: Histogram
    requests_held: Gauge


_BATCH_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_N = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def create_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    r = registry or CollectorRegistry()
    region = ("region",)
    return Metrics(
        registry=r,
        orders=Counter("microte_orders", "Orders answered, by outcome and rejection reason",
                       (*region, "outcome", "reason"), registry=r),
        order_ack_latency=Histogram("microte_order_ack_latency_seconds",
                                    "From an order's publication by the client to its answer", region,
                                    buckets=_FAST, registry=r),
        book_orders=Gauge("microte_book_orders", "Orders in the book of the slot last cleared, by side",
                          (*region, "side"), registry=r),
        cancels=Counter("microte_cancels", "Cancel requests, by outcome", (*region, "outcome"), registry=r),
        members_active=Gauge("microte_members_active", "Participants currently active", region, registry=r),
        clearing_duration=Histogram("microte_clearing_duration_seconds", "Time to clear one slot", region,
                                    buckets=_FAST, registry=r),
        matched_energy=Counter("microte_matched_energy_joules", "Energy matched peer to peer",
                               (*region, "source"), registry=r),
        slot_matched_energy=Gauge("microte_slot_matched_energy_joules", "Energy matched in the slot last cleared",
                                  region, registry=r),
        slot_price=Gauge("microte_slot_price_dollars_per_kwh",
                         "Volume-weighted average buy price of the slot last cleared", region, registry=r),
        settlements=Counter("microte_settlements", "Settlements made", region, registry=r),
        readings=Counter("microte_meter_readings", "Meter readings received, by timing",
                         (*region, "timing"), registry=r),
        readings_missing=Counter("microte_meter_readings_missing", "Active participants without a reading at "
                                 "reconciliation", region, registry=r),
        reconciliation_duration=Histogram("microte_reconciliation_duration_seconds", "Time to reconcile one slot",
                                          region, buckets=_FAST, registry=r),
        grid_energy=Counter("microte_grid_energy_joules", "Residual energy exchanged with the grid",
                            (*region, "direction"), registry=r),
        ledger_write_duration=Histogram("microte_ledger_write_duration_seconds", "One ledger transaction",
                                        region, buckets=_FAST, registry=r),
        ledger_backlog=Gauge("microte_ledger_backlog_records", "Records received but not yet committed",
                             region, registry=r),
        ledger_rows=Counter("microte_ledger_rows_written", "Rows inserted into the ledger, by table",
                            (*region, "table"), registry=r),
        ledger_energy_imbalance=Gauge("microte_ledger_energy_imbalance_joules",
                                      "Energy that the last recorded slot's entries do not account for (must be 0)",
                                      region, registry=r),
        ledger_money_imbalance=Gauge("microte_ledger_money_imbalance_dollars",
                                     "Sum of money over all parties in the last recorded slot (must be 0)",
                                     region, registry=r),
        slots_recorded=Counter("microte_slots_recorded", "Delivered slots fully written to the ledger",
                               region, registry=r),
        rounds=Counter("microte_rounds", "Rounds started", region, registry=r),
        round_duration=Histogram("microte_round_duration_seconds", "Wall time of one round", region,
                                 buckets=_ROUND, registry=r),
        round_timeouts=Counter("microte_round_timeouts", "Rounds ended by the timeout, by what was missing",
                               (*region, "missing"), registry=r),
        round_start=Gauge("microte_round_start_timestamp_seconds", "Market time at which the current round started",
                          region, registry=r),
        clock_fence=Gauge("microte_clock_fence", "Fencing number of the clock lease held", region, registry=r),
        clock_leader=Gauge("microte_clock_leader", "1 when this clock holds the region's lease", region, registry=r),
        dead_letters=Counter("microte_dead_letters", "Messages sent to the dead-letter queue, by service and reason",
                             (*region, "service", "reason"), registry=r),
        rejected_requests=Counter("microte_rejected_requests", "Requests rejected, by service, request and reason",
                                  (*region, "service", "request", "reason"), registry=r),
        stale_fence=Counter("microte_stale_fence", "Round starts ignored because their fencing number was stale",
                            (*region, "service"), registry=r),
        forged_messages=Counter("microte_forged_messages",
                                "Facts and answers refused because they did not come from the region's services, "
                                "and messages on a routing key they do not belong on, by channel and why",
                                (*region, "service", "channel", "why"), registry=r),
        dependency_up=Gauge("microte_dependency_up", "1 while the dependency answers, 0 during an outage",
                            (*region, "service", "dependency"), registry=r),
        outage_retries=Counter("microte_outage_retries",
                               "Handler attempts that failed because a dependency was away; the message is kept "
                               "and tried again", (*region, "service"), registry=r),
        dead_letter_overflow=Counter("microte_dead_letter_overflow",
                                     "Messages the full dead-letter queue refused (logged, then dropped)",
                                     (*region, "service"), registry=r),
        loop_restarts=Counter("microte_loop_restarts", "Background loops restarted after a failure",
                              (*region, "service", "loop"), registry=r),
        handler_failures=Counter("microte_handler_failures",
                                 "Handler attempts that failed on the message's own merits, with healthy "
                                 "dependencies", (*region, "service"), registry=r),
        slots_held=Counter("microte_slots_held", "Slots that could not be cleared or reconciled and are held for "
                           "`microte replay-slot`, by stage", (*region, "stage"), registry=r),
        state_rebuilds=Counter("microte_state_rebuilds", "Round states rebuilt in Redis from the ledger after "
                               "Redis lost them", region, registry=r),
        messages_received=Counter("microte_messages_received", "Deliveries taken from the service's queue, by "
                                  "routing-key shape (an answer's participant is *)", (*region, "service", "key"),
                                  registry=r),
        messages_published=Counter("microte_messages_published", "Messages published (confirmed), by "
                                   "routing-key shape (an answer's participant is *)", (*region, "service", "key"),
                                   registry=r),
        batch_duration=Histogram("microte_batch_duration_seconds", "One handler run over the messages drained "
                                 "together, from start to durable (before their acknowledgements)",
                                 (*region, "service", "handler"), buckets=_BATCH_S, registry=r),
        batch_size=Histogram("microte_batch_size", "Messages handled together in one handler run",
                             (*region, "service", "handler"), buckets=_BATCH_N, registry=r),
        requests_held=Gauge("microte_requests_held", "Requests received and held back for their sender's turn "
                            "(one sender sends more than its share of a pass: a flood)", (*region, "service"),
                            registry=r),
    )


def initialise(metrics: Metrics, region: str) -> None:
    """Create every series whose only label is the region, at zero, so that rates and
    alerts see the first event (a labelled series exists only once it is used)."""
    for value in vars(metrics).values():
        if isinstance(value, (Counter, Gauge, Histogram)) and value._labelnames == ("region",):
            value.labels(region)
    metrics.orders.labels(region, "accepted", "")
