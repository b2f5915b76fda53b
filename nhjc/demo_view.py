"""The demo's live summary: what the pipeline has done so far, read from the service's
metrics, the database and the mock platforms (``Watcher``), shown as a rich table or, when
the output is not a terminal, as one plain line every few seconds."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from nhjc.service import Service
from processing.scorecard_sql import IN_VERIFICATION
from tools.platform.mock import MockPlatform
from tools.sim import Counters, Simulator
from tools.sim.frames import CST

__all__ = ["Snapshot", "Watcher", "live_view", "plain_line", "render"]

STAT_NAMES = {0: "15 min", 1: "day", 2: "month", 3: "year"}
SQL_EVERY_S = 3.0

PERIODS_SQL = "SELECT stat_type, count(*) AS n FROM consumption WHERE enterprise = ANY($1::text[]) GROUP BY 1"
# Per simulated enterprise: 15-minute values received since the replay began, against
# its items x the quarters computed so far (for any enterprise).
COMPLETENESS_SQL = """
WITH q AS (
    SELECT count(DISTINCT period_start) AS n FROM consumption
    WHERE stat_type = 0 AND period_start >= $2 AND enterprise = ANY($1::text[])
), reg AS (
    SELECT enterprise, count(*) AS items FROM items WHERE enterprise = ANY($1::text[]) GROUP BY 1
), got AS (
    SELECT c.enterprise, count(*) AS n
    FROM consumption c JOIN items i ON i.enterprise = c.enterprise AND i.code = c.code
    WHERE c.stat_type = 0 AND c.coverage > 0 AND c.period_start >= $2
      AND c.enterprise = ANY($1::text[])
    GROUP BY 1
)
SELECT r.enterprise, r.items * q.n AS expected, coalesce(g.n, 0) AS received
FROM reg r CROSS JOIN q LEFT JOIN got g ON g.enterprise = r.enterprise
"""

# The simulated enterprises' instruments today (local date $2): in service, out of
# verification (not verified or calibrated, or no recorded period containing today),
# due within 30 days, and the replacements recorded.
INSTRUMENTS_SQL = f"""
WITH m AS (
    SELECT m.enterprise, m.ser_no, m.data_codes, m.next_align_date,
           {IN_VERIFICATION.format(day="$2::date")} AS in_date
    FROM meters m WHERE m.enterprise = ANY($1::text[]) AND m.retired_at IS NULL
)
SELECT count(*) AS meters,
       count(*) FILTER (WHERE NOT in_date) AS out_of_date,
       count(*) FILTER (WHERE in_date AND next_align_date <= $2::date + 30) AS due,
       (SELECT count(*) FROM meter_replacements WHERE enterprise = ANY($1::text[])) AS replacements,
       coalesce((SELECT array_agg(enterprise || ' ' || ser_no || ' ' || coalesce(next_align_date::text, 'never')
                                  ORDER BY enterprise, ser_no) FROM m WHERE NOT in_date), '{{}}') AS listed
FROM m
"""
# This month's scorecard of the simulated enterprises (quality_daily), all together.
SCORECARD_SQL = """
SELECT sum(received)::float8 / nullif(sum(expected), 0) AS completeness,
       sum(agreement_ok)::float8 / nullif(sum(agreement_items), 0) AS agreement,
       sum(start_pinned)::float8 / nullif(sum(start_values), 0) AS start,
       sum(meters_verified)::float8 / nullif(sum(meters), 0) AS verification,
       count(*) FILTER (WHERE completeness < 0.9) AS under_90
FROM quality_daily
WHERE period = 'month' AND period_start = $2 AND enterprise = ANY($1::text[])
"""
SCORECARD_NAMES = {"completeness": "completeness", "agreement": "day vs month", "start": "period start",
                   "verification": "in verification"}


@dataclass
class Snapshot:
    elapsed_s: float = 0.0
    accepted: float = 0.0
    rate: float = 0.0
    frames: float = 0.0
    quarantine: dict[tuple[str, str], float] = field(default_factory=dict)
    computed: dict[str, float] = field(default_factory=dict)   # nhjc_periods_computed_total
    periods: dict[int, int] = field(default_factory=dict)      # consumption rows by stat_type
    backlog: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    platforms: dict[str, dict[str, Any]] = field(default_factory=dict)
    completeness: list[tuple[str, float]] = field(default_factory=list)  # (enterprise, ratio) low first
    instruments: dict[str, int] = field(default_factory=dict)  # meters, out_of_date, due, replacements
    out_of_date: list[str] = field(default_factory=list)       # "enterprise serNo nextAlignDate"
    scorecard: dict[str, float | None] = field(default_factory=dict)  # this month, by measure
    sim: Counters | None = None
    sim_state: str = "starting"
    note: str = ""


class Watcher:
    """Reads the figures: the service's registry each refresh, the database every few s."""

    def __init__(self, service: Service, registry: CollectorRegistry, platforms: list[MockPlatform],
                 sim: Simulator, since: float) -> None:
        self.service, self.registry, self.platforms, self.sim = service, registry, platforms, sim
        self.codes = [e.code for e in sim.enterprises]
        self.since = since
        self.began = time.monotonic()
        self._last = (self.began, 0.0)
        self._next_sql = 0.0
        self.snap = Snapshot()

    async def refresh(self) -> Snapshot:
        s = self.snap
        now = time.monotonic()
        s.elapsed_s = now - self.began
        s.quarantine, s.computed, s.backlog, s.acked = {}, {}, {}, {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                n, lab, v = sample.name, sample.labels, sample.value
                if n == "nhjc_readings_accepted_total":
                    s.accepted = v
                elif n == "nhjc_frames_received_total":
                    s.frames = v
                elif n == "nhjc_quarantined_total":
                    s.quarantine[(lab["reason"], lab["level"])] = v
                elif n == "nhjc_periods_computed_total":
                    s.computed[STAT_NAMES.get(int(lab["stat_type"]), lab["stat_type"])] = v
                elif n == "nhjc_uplink_backlog":
                    s.backlog[lab["target"]] = v
                elif n == "nhjc_uplink_acked_total":
                    s.acked[lab["target"]] = v
        t0, a0 = self._last
        if now - t0 >= 1.0:
            s.rate = (s.accepted - a0) / (now - t0)
            self._last = (now, s.accepted)
        s.platforms = {p.name: p.stats() for p in self.platforms}
        s.sim = self.sim.counters
        pool = self.service.pool
        if pool is not None and now >= self._next_sql:
            self._next_sql = now + SQL_EVERY_S
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                rows = await pool.fetch(PERIODS_SQL, self.codes, timeout=5)
                s.periods = {int(r["stat_type"]): int(r["n"]) for r in rows}
                rows = await pool.fetch(COMPLETENESS_SQL, self.codes,
                                        datetime.fromtimestamp(self.since, UTC), timeout=5)
                s.completeness = sorted(
                    ((r["enterprise"], r["received"] / r["expected"]) for r in rows if r["expected"]),
                    key=lambda x: x[1])
                today = datetime.now(self.service.settings.processing.zone).date()
                row = await pool.fetchrow(INSTRUMENTS_SQL, self.codes, today, timeout=5)
                if row is not None:
                    s.instruments = {k: int(row[k]) for k in ("meters", "out_of_date", "due", "replacements")}
                    s.out_of_date = list(row["listed"])
                row = await pool.fetchrow(SCORECARD_SQL, self.codes, today.replace(day=1), timeout=5)
                if row is not None and row["completeness"] is not None:
                    s.scorecard = {k: row[k] for k in SCORECARD_NAMES}
                    s.scorecard["under_90"] = float(row["under_90"])
        return s


def _n(v: float) -> str:
    return f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _sim_time(c: Counters | None) -> str:
    if c is None or c.sim_time is None:
        return "-"
    return datetime.fromtimestamp(c.sim_time, CST).strftime("%m-%d %H:%M")


def plain_line(s: Snapshot) -> str:
    q = sum(s.quarantine.values())
    qs = ", ".join(f"{r}/{lv} {_n(v)}" for (r, lv), v in sorted(s.quarantine.items()) if v) or "none"
    per = ", ".join(f"{STAT_NAMES[k]} {_n(v)}" for k, v in sorted(s.periods.items())) or "none yet"
    up = "; ".join(
        f"{name} backlog {_n(s.backlog.get(name, 0))} acked {_n(s.acked.get(name, 0))} "
        f"platform received {_n(st['received'])} records {_n(st['records'])}"
        for name, st in s.platforms.items())
    if s.completeness:
        lo, hi = s.completeness[0], s.completeness[-1]
        comp = f"lowest {lo[0]} {lo[1]:.0%}, highest {hi[0]} {hi[1]:.0%}"
    else:
        comp = "none yet"
    i = s.instruments
    inst = (f"{i['meters']}, out of verification {i['out_of_date']}, due in 30 days {i['due']}, "
            f"replacements recorded {i['replacements']}") if i else "none yet"
    card = ", ".join(f"{name} {_pct(s.scorecard.get(k))}" for k, name in SCORECARD_NAMES.items()) \
        if s.scorecard else "none yet"
    c = s.sim
    sim = (f"{s.sim_state}, sim time {_sim_time(c)}, frames {_n(c.frames)}, readings {_n(c.readings)}"
           if c else s.sim_state)
    return (f"[demo {s.elapsed_s:.0f}s] readings accepted {_n(s.accepted)} ({s.rate:,.0f}/s), "
            f"frames {_n(s.frames)} | quarantine {_n(q)}: {qs} | periods {per} | uplink {up} | "
            f"completeness {comp} | instruments {inst} | scorecard this month: {card} | simulator {sim}")


def render(s: Snapshot) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(("nhjc demo", "bold"), f"  {s.elapsed_s:.0f} s   Ctrl-C to stop")
    if s.note:
        head.append(f"\n{s.note}", style="yellow")

    ingest = Table(title="ingest", show_header=False, title_justify="left")
    ingest.add_row("readings accepted", _n(s.accepted))
    ingest.add_row("readings/s", f"{s.rate:,.0f}")
    ingest.add_row("frames", _n(s.frames))
    c = s.sim
    ingest.add_row("[dim]simulator[/]", s.sim_state)
    if c is not None:
        ingest.add_row("[dim]sim time[/]", _sim_time(c))
        ingest.add_row("[dim]frames published[/]", _n(c.frames))
        ingest.add_row("[dim]readings published[/]", _n(c.readings))
        ingest.add_row("[dim]quarantine expected[/]", _n(c.quarantined))

    quar = Table("reason", "level", "count", title="quarantine", title_justify="left")
    for (reason, level), v in sorted(s.quarantine.items(), key=lambda kv: -kv[1]):
        if v:
            quar.add_row(reason, level, _n(v))
    if not quar.rows:
        quar.add_row("none yet", "", "")

    per = Table("period", "rows", "computed", title="periods", title_justify="left")
    for k, name in STAT_NAMES.items():
        per.add_row(name, _n(s.periods.get(k, 0)), _n(s.computed.get(name, 0)))

    up = Table("target", "backlog", "acked", "received", "records", "rejected",
               title="uplink → mock platforms", title_justify="left")
    for name, st in s.platforms.items():
        up.add_row(name, _n(s.backlog.get(name, 0)), _n(s.acked.get(name, 0)), _n(st["received"]),
                   _n(st["records"]), _n(st["rejected_records"]))

    comp = Table("enterprise", "15-min values", title="completeness (lowest, highest)", title_justify="left")
    few = s.completeness
    shown = few if len(few) <= 6 else few[:3] + few[-3:]
    for i, (ent, ratio) in enumerate(shown):
        if len(few) > 6 and i == 3:
            comp.add_row("…", "")
        style = "red" if ratio < 0.5 else "yellow" if ratio < 0.9 else "green"
        comp.add_row(ent, f"[{style}]{ratio:.1%}[/]")
    if not shown:
        comp.add_row("none yet", "")

    inst = Table(title="instruments", show_header=False, title_justify="left")
    counts = s.instruments
    inst.add_row("in service", _n(counts.get("meters", 0)))
    inst.add_row("out of verification", f"[red]{_n(counts.get('out_of_date', 0))}[/]" if counts.get("out_of_date") else "0")
    for line in s.out_of_date[:4]:
        inst.add_row("", f"[dim]{line}[/]")
    inst.add_row("due within 30 days", _n(counts.get("due", 0)))
    inst.add_row("replacements recorded", _n(counts.get("replacements", 0)))

    card = Table("this month", "all enterprises", title="the platforms' scorecard", title_justify="left")
    for measure, name in SCORECARD_NAMES.items():
        score = s.scorecard.get(measure)
        style = "dim" if score is None else "red" if score < 0.5 else "yellow" if score < 0.9 else "green"
        card.add_row(name, f"[{style}]{_pct(score)}[/]")
    card.add_row("enterprises under 90 %", _n(s.scorecard.get("under_90") or 0))

    top = Table.grid(padding=(0, 3))
    top.add_row(ingest, quar, per)
    bottom = Table.grid(padding=(0, 3))
    bottom.add_row(up, comp)
    metrology = Table.grid(padding=(0, 3))
    metrology.add_row(inst, card)
    return Group(head, top, bottom, metrology)


# ------------------------------------------------------------------------- running


def live_view() -> Any:
    """A rich Live view; log records are printed above it (warnings and worse)."""
    from rich.console import Console
    from rich.live import Live
    from rich.logging import RichHandler

    console = Console()
    root = logging.getLogger()
    handler = RichHandler(console=console, show_path=False)
    handler.setLevel(max(logging.WARNING, root.level))
    root.handlers = [handler]
    return Live(console=console, refresh_per_second=2, transient=False)
