"""The HTML report of a region (``microte report --html``, and every demo): the scenario,
a table of key figures and plots, in one file that opens offline (Plotly, its JavaScript
inlined once). Everything comes from the ledger, through the export rows
(services/export.py): energy in Wh, money exact until it is shown.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.export import Export, Row, battery_charge, export
from shared.market.timezones import zone
from shared.runtime.ledger import LedgerStore
from shared.runtime.settings import MarketSettings

_KWH = Decimal(1000)


@dataclass(frozen=True)
class Figures:
    """The key figures, exact where they are sums (Wh, $), as ratios otherwise."""

    slots: int
    households: int
    load_wh: int  # what the households used: metered imports and self-consumption
    production_wh: int  # what they produced: metered exports and self-consumption
    traded_wh: int  # settled peer to peer
    local_wh: int  # delivered peer to peer or covered by a battery
    import_wh: int
    export_wh: int
    peak_import_kw: Decimal
    peak_export_kw: Decimal
    shortfall_wh: int
    unconsumed_wh: int
    bess_cover_wh: int
    penalties_usd: Decimal  # sellers paid for energy they did not deliver
    unconsumed_loss_usd: Decimal  # buyers paid for energy they did not use, less what the grid paid back
    local_price: Decimal | None  # $/kWh, what buyers paid on average
    grid_buy_price: Decimal | None  # $/kWh, average over the slots
    grid_sell_price: Decimal | None
    saving_usd: Decimal
    gini: Decimal | None  # of the households' savings

    @property
    def local_share(self) -> Decimal | None:
        return _ratio(self.local_wh, self.load_wh)

    @property
    def self_sufficiency(self) -> Decimal | None:
        """Share of the load not imported from the grid."""
        imported = _ratio(self.import_wh, self.load_wh)
        return None if imported is None else 1 - imported

    @property
    def self_consumption(self) -> Decimal | None:
        """Share of the production used inside the community (not exported)."""
        exported = _ratio(self.export_wh, self.production_wh)
        return None if exported is None else 1 - exported


def _int(row: Row, column: str) -> int:
    value = row[column]
    assert isinstance(value, int), (column, value)
    return value


def _dec(row: Row, column: str) -> Decimal | None:
    value = row[column]
    return None if value is None else Decimal(str(value))


def _decs(rows: list[Row], column: str) -> list[Decimal]:
    return [d for r in rows if (d := _dec(r, column)) is not None]


def _ratio(a: int | Decimal, b: int | Decimal) -> Decimal | None:
    return Decimal(a) / Decimal(b) if b else None


def gini(values: list[Decimal]) -> Decimal | None:
    """Gini coefficient (mean absolute difference over twice the mean); None unless the
    mean is positive. Savings can be negative, and then it can exceed 1."""
    if not values:
        return None
    mean = sum(values, Decimal(0)) / len(values)
    if mean <= 0:
        return None
    ordered = sorted(values)
    n = len(ordered)
    # sum over pairs |xi - xj| = 2 * sum_i (2i - n + 1) x_i for sorted x (i from 0)
    total = sum((Decimal(2 * i - n + 1) * x for i, x in enumerate(ordered)), Decimal(0)) * 2
    return total / (2 * n * n * mean)


def figures(done: Export, duration_s: int) -> Figures:
    s, h = done.slots, done.households

    def total(column: str) -> int:
        return sum(_int(r, column) for r in s)

    def kw(wh: int) -> Decimal:
        return Decimal(wh) * 3600 / duration_s / 1000

    traded = total("p2p_settled_wh")
    paid = sum(((_dec(r, "p2p_buy_price") or Decimal(0)) * _int(r, "p2p_settled_wh") for r in s), Decimal(0))
    savings = _decs(h, "saving_usd")
    return Figures(
        slots=len(s), households=len(h),
        load_wh=total("metered_import_wh") + total("metered_self_consumed_wh"),
        production_wh=total("metered_export_wh") + total("metered_self_consumed_wh"),
        traded_wh=traded, local_wh=total("p2p_delivered_wh") + total("bess_cover_wh"),
        import_wh=total("grid_import_wh"), export_wh=total("grid_export_wh"),
        peak_import_kw=kw(max((_int(r, "grid_import_wh") for r in s), default=0)),
        peak_export_kw=kw(max((_int(r, "grid_export_wh") for r in s), default=0)),
        shortfall_wh=total("shortfall_wh"), unconsumed_wh=total("unconsumed_wh"), bess_cover_wh=total("bess_cover_wh"),
        penalties_usd=sum(_decs(s, "shortfall_penalty_usd"), Decimal(0)),
        unconsumed_loss_usd=sum(_decs(s, "unconsumed_loss_usd"), Decimal(0)),
        local_price=paid / traded if traded else None,
        grid_buy_price=_ratio(sum(_decs(s, "grid_buy_price"), Decimal(0)), len(s)),
        grid_sell_price=_ratio(sum(_decs(s, "grid_sell_price"), Decimal(0)), len(s)),
        saving_usd=sum(savings, Decimal(0)),
        gini=gini(savings),
    )


def _pct(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _price(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.4f} $/kWh"


def _kwh(wh: int) -> str:
    return f"{Decimal(wh) / _KWH:,.3f} kWh"


def _tariff(market: MarketSettings) -> str:
    t = market.tariff
    return f"sells at {t.price} $/kWh x (1 + {t.fee_ratio}), buys at {t.price} $/kWh"


def _duration_curve(slots: list[Row]) -> tuple[list[float], list[float]]:
    """The local price of the slots with trade, dearest first, against their share (%)."""
    prices = sorted((float(d) for d in _decs(slots, "p2p_buy_price")), reverse=True)
    return [100 * (i + 1) / len(prices) for i in range(len(prices))], prices


def _local(ts: int, tz: str) -> str:
    return datetime.fromtimestamp(ts, zone(tz)).strftime("%Y-%m-%d %H:%M %Z")


def render(done: Export, market: MarketSettings, *, verdict: str, community: dict[str, Any] | None = None) -> str:
    """The whole page; ``community``, the households a simulated region recorded (what they own)."""
    import plotly.graph_objects as go  # the report's plotting library; imported when used

    f = figures(done, market.schedule.duration)
    slots, homes = done.slots, done.households
    times = [str(r["local_start"]) for r in slots]

    def number(rows: list[Row], column: str, scale: Decimal = Decimal(1)) -> list[float | None]:
        return [None if (d := _dec(r, column)) is None else float(d / scale) for r in rows]

    charts: list[tuple[str, Any]] = []
    prices = go.Figure()
    prices.add_scatter(x=times, y=number(slots, "p2p_buy_price"), mode="markers", name="local (buyers paid)")
    prices.add_scatter(x=times, y=number(slots, "grid_buy_price"), name="grid sells at")
    prices.add_scatter(x=times, y=number(slots, "grid_sell_price"), name="grid buys at")
    charts.append(("Local price and grid prices per slot ($/kWh)", prices))
    volume = go.Figure(go.Bar(x=times, y=number(slots, "p2p_settled_wh", _KWH), name="traded"))
    charts.append(("Energy traded peer to peer per slot (kWh)", volume))
    flows = go.Figure()
    load = [(_int(r, "metered_import_wh") + _int(r, "metered_self_consumed_wh")) / 1000 for r in slots]
    pv = [(_int(r, "metered_export_wh") + _int(r, "metered_self_consumed_wh")) / 1000 for r in slots]
    flows.add_scatter(x=times, y=load, name="load")
    flows.add_scatter(x=times, y=pv, name="production (PV)")
    flows.add_scatter(x=times, y=number(slots, "grid_import_wh", _KWH), name="grid import")
    flows.add_scatter(x=times, y=number(slots, "grid_export_wh", _KWH), name="grid export")
    charts.append(("Community load, production, import and export per slot (kWh)", flows))
    shares, traded = _duration_curve(slots)
    duration = go.Figure(go.Scatter(x=shares, y=traded, mode="lines", name="local price"))
    duration.update_xaxes(title="share of the slots with trade (%)")
    charts.append(("Price duration curve of the local price ($/kWh)", duration))
    bills = go.Figure()
    ids = [str(r["participant"]) for r in homes]
    bills.add_bar(x=ids, y=number(homes, "bill_usd"), name="bill")
    bills.add_bar(x=ids, y=number(homes, "grid_only_usd"), name="grid only")
    bills.update_layout(barmode="group")
    charts.append(("Each household's bill against the grid alone ($)", bills))
    charge = battery_charge(community)
    capacity = int((community or {}).get("battery", {}).get("capacity_wh", 0))
    if charge and capacity:
        here = zone(market.tariff.timezone)
        at = [datetime.fromtimestamp(end, here).isoformat() for _, end, *_ in charge]
        soc = go.Figure()
        soc.add_scatter(x=at, y=[100 * stored / capacity for _, _, stored, _, _ in charge], name="all batteries")
        soc.add_scatter(x=at, y=[low / 10 for *_, low, _ in charge], name="the emptiest", line={"dash": "dot"})
        soc.add_scatter(x=at, y=[high / 10 for *_, high in charge], name="the fullest", line={"dash": "dot"})
        soc.update_yaxes(range=[0, 100])
        charts.append(("Battery state of charge at the end of each slot (% of capacity)", soc))

    tz = market.tariff.timezone
    scenario = [
        ("region", market.region),
        ("from", _local(_int(slots[0], "slot_start"), tz) if slots else "n/a"),
        ("to", _local(_int(slots[-1], "slot_end"), tz) if slots else "n/a"),
        ("time zone", tz),
        ("round length", f"{market.schedule.duration} s, gate {market.schedule.close_steps} rounds ahead"),
        ("pricing rule", str(market.rule)),
        ("grid tariff", _tariff(market)),
        ("households", str(f.households)),
    ]
    sections = [("Scenario", ""), ("Key figures", _table(_kpis(f, verdict)))]
    if community is None:
        scenario.append(("what they own", "not recorded in the ledger (a live region, or a run from before it kept "
                                          "it; PV, batteries and loads show in their meter readings)"))
    else:
        if community.get("name"):
            scenario.insert(0, ("scenario", " - ".join(filter(None, (community["name"], community["description"])))))
        scenario.append(("what they own", _owned(community["households"])))
        if community.get("weather"):  # recorded since field data came in
            loads = Counter(str(h.get("load", "synthetic")) for h in community["households"])
            scenario.append(("PV from", str(community["weather"])))
            scenario.append(("load profiles", ", ".join(f"{name} {n}" for name, n in sorted(loads.items()))))
        sections.append(("Households", _households(community["households"], homes)))
    sections[0] = ("Scenario", _table(scenario))
    note = "" if charge else ("Battery state of charge is not plotted: the ledger has it only for a simulated "
                              "region with batteries (a real household reports its meter, not its battery).")
    return _page(f"microte report: region {market.region}", sections, note, charts)


def _owned(homes: list[dict[str, Any]]) -> str:
    """What the households own, in one line."""
    pv = [Decimal(h["pv_kw"]) for h in homes if Decimal(h["pv_kw"])]
    batteries = [h for h in homes if Decimal(h["battery_kwh"])]
    strategies = Counter(str(h["strategy"]) for h in homes)
    def total(values: list[Decimal]) -> str:
        return f"{sum(values, Decimal(0)).normalize():f}"

    evs = sum(1 for h in homes if Decimal(h.get("ev_kwh_per_day", 0)))
    heat_pumps = sum(1 for h in homes if Decimal(h.get("heat_kwh", 0)))
    return (f"{len(pv)} with PV ({total(pv)} kW in all); {len(batteries)} with a battery "
            f"({total([Decimal(h['battery_kwh']) for h in batteries])} kWh, "
            f"{total([Decimal(h['battery_kw']) for h in batteries])} kW in all); "
            + (f"{evs} with an EV; {heat_pumps} with a heat pump; " if evs or heat_pumps else "") + "strategies: "
            + ", ".join(f"{name} {n}" for name, n in sorted(strategies.items())))


def _households(homes: list[dict[str, Any]], bills: list[Row]) -> str:
    """Each household: what it owns beside its bill."""
    billed = {str(r["participant"]): r for r in bills}
    head = ("household", "PV (kW)", "battery (kWh / kW)", "base load (W)", "strategy", "bill ($)", "grid only ($)",
            "saving ($)")
    rows = []
    for h in homes:
        r = billed.get(h["id"], {})
        battery = f"{h['battery_kwh']} / {h['battery_kw']}" if Decimal(h["battery_kwh"]) else "-"
        money = [_money(_dec(r, c)) if r else "-" for c in ("bill_usd", "grid_only_usd", "saving_usd")]
        rows.append((h["id"], h["pv_kw"] if Decimal(h["pv_kw"]) else "-", battery, str(h["base_load_w"]),
                     str(h["strategy"]), *money))
    return ("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
            + "</table>")


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                               for k, v in rows) + "</table>"


def _page(title: str, sections: list[tuple[str, str]], note: str, charts: list[tuple[str, Any]]) -> str:
    """One page: sections of HTML, a note, then the charts (plotly.js inlined before the first)."""
    import plotly.io as pio

    parts = []
    for n, (chart_title, chart) in enumerate(charts):
        chart.update_layout(title=chart_title, height=380, margin={"l": 50, "r": 20, "t": 50, "b": 40})
        parts.append(pio.to_html(chart, full_html=False, include_plotlyjs=(n == 0), div_id=f"chart-{n}"))
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border-bottom:1px solid #ddd;padding:4px 12px;text-align:left}}
th{{font-weight:normal;color:#555}}</style></head><body>
<h1>{html.escape(title)}</h1>
{body}
<p>{html.escape(note)}</p>
<h2>Plots</h2>
{"".join(parts)}
</body></html>
"""


def _kpis(f: Figures, verdict: str) -> list[tuple[str, str]]:
    return [
        ("energy traded peer to peer (settled)", _kwh(f.traded_wh)),
        ("delivered locally (p2p and battery cover)", f"{_kwh(f.local_wh)}, {_pct(f.local_share)} of the load"),
        ("community load / production", f"{_kwh(f.load_wh)} / {_kwh(f.production_wh)}"),
        ("self-sufficiency (load not imported)", _pct(f.self_sufficiency)),
        ("self-consumption (production not exported)", _pct(f.self_consumption)),
        ("imported / exported", f"{_kwh(f.import_wh)} / {_kwh(f.export_wh)}"),
        ("peak import / export", f"{f.peak_import_kw:.3f} kW / {f.peak_export_kw:.3f} kW"),
        ("average local price (buyers paid)", _price(f.local_price)),
        ("average grid prices (sells at / buys at)", f"{_price(f.grid_buy_price)} / {_price(f.grid_sell_price)}"),
        ("deviations: shortfall / unconsumed / battery cover",
         f"{_kwh(f.shortfall_wh)} / {_kwh(f.unconsumed_wh)} / {_kwh(f.bess_cover_wh)}"),
        ("what deviations cost: shortfall penalties / unconsumed energy",
         f"{f.penalties_usd:.2f} $ / {f.unconsumed_loss_usd:.2f} $"),
        ("total saving against the grid alone", f"{f.saving_usd:.2f} $"),
        ("fairness: Gini coefficient of the savings", "n/a" if f.gini is None else f"{f.gini:.3f}"),
        ("ledger audit", verdict),
    ]



async def write_html_report(store: LedgerStore, market: MarketSettings, ok: bool, path: Path) -> None:
    """The region's HTML report at ``path``; ImportError without plotly (the extra "report")."""
    done = await export(store, market)
    page = render(done, market, verdict="PASS" if ok else "FAIL", community=done.community)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


def render_comparison(runs: list[tuple[MarketSettings, Export, bool]], labels: list[str] | None = None) -> str:
    """One page for the same community under several rules (or strategies, ``labels`` naming
    each run): the key figures side by side, the local price and traded volume per slot
    overlaid, and each household's saving."""
    import plotly.graph_objects as go

    rules = labels or [str(m.rule) for m, _, _ in runs]
    columns = [_kpis(figures(done, m.schedule.duration), "PASS" if ok else "FAIL") for m, done, ok in runs]
    header = "<tr><th></th>" + "".join(f"<th>{html.escape(r)}</th>" for r in rules) + "</tr>"
    body = "".join("<tr><th>" + html.escape(name) + "</th>"
                   + "".join(f"<td>{html.escape(col[i][1])}</td>" for col in columns) + "</tr>"
                   for i, (name, _) in enumerate(columns[0]))
    m0 = runs[0][0]
    scenario = [("regions", ", ".join(m.region for m, _, _ in runs)), ("time zone", m0.tariff.timezone),
                ("round length", f"{m0.schedule.duration} s"),
                ("grid tariff", _tariff(m0))]
    price, volume, saving, duration = go.Figure(), go.Figure(), go.Figure(), go.Figure()
    for rule, (_, done, _) in zip(rules, runs, strict=True):
        times = [str(r["local_start"]) for r in done.slots]
        price.add_scatter(x=times, y=[None if (d := _dec(r, "p2p_buy_price")) is None else float(d)
                                      for r in done.slots], mode="markers", name=rule)
        volume.add_scatter(x=times, y=[_int(r, "p2p_settled_wh") / 1000 for r in done.slots], name=rule)
        saving.add_bar(x=[str(r["participant"]) for r in done.households],
                       y=[float(_dec(r, "saving_usd") or 0) for r in done.households], name=rule)
        shares, prices = _duration_curve(done.slots)
        duration.add_scatter(x=shares, y=prices, name=rule)
    saving.update_layout(barmode="group")
    duration.update_xaxes(title="share of the slots with trade (%)")
    charts: list[tuple[str, Any]] = [
        ("Local price per slot, by run ($/kWh)", price), ("Energy traded per slot, by run (kWh)", volume),
        ("Price duration curves, by run ($/kWh)", duration),
        ("Each household's saving against the grid alone, by run ($)", saving)]
    return _page(f"microte comparison: {', '.join(rules)}",
                 [("Scenario", _table(scenario)), ("Key figures", f"<table>{header}{body}</table>")],
                 "The same community, seed and market time in each run (a rule, or a strategy every household "
                 "trades with), each in a region of its own.", charts)


async def write_comparison(ledger_url: str, markets: list[MarketSettings], path: Path,
                           labels: list[str] | None = None) -> None:
    """The comparison page of the regions of ``markets`` (one run each, named by ``labels``,
    else by its rule) at ``path``."""
    from shared.runtime.audit import audit
    from shared.runtime.ledger import open_ledger

    store = open_ledger(ledger_url)
    await store.open()
    try:
        runs = [(m, await export(store, m), (await audit(store, m)).ok) for m in markets]
    finally:
        await store.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_comparison(runs, labels))
