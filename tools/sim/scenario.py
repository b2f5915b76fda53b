"""The deterministic heart of the simulator: what every gateway sends, and when.

A :class:`Scenario` turns enterprises, a clock and faults into :class:`Message` objects with
the simulated time each is due (``send_at``).  It does no I/O and reads no clock, so the same
arguments give the same messages, byte for byte: the runner only paces and publishes them,
and tests can compare runs.

Timeline: ticks every ``interval_s`` on multiples of the interval.  Backfill ticks cover
[start - backfill, start) and are all due at ``start`` (a gateway back from an outage sends
its backlog at once, many ticks per frame); live ticks start at ``start``, and each gateway
sends each tick's frame a few seconds after it (gateways are not synchronised).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import orjson

from tools.sim.enterprises import Enterprise, Gateway, invalid_credit_code, items_payload
from tools.sim.faults import (
    MALFORMED_REASONS,
    NO_FAULTS,
    READING_REASONS,
    FaultSpec,
    bad_reading,
    broken_frame,
    finish,
)
from tools.sim.frames import DEFAULT_LIMITS, Limits, pack, readings, rfc3339
from tools.sim.instruments import AppliedReplacement, PlannedReplacement
from tools.sim.meters import Meters
from tools.sim.plant import KIND_CUMULATIVE, Plant

__all__ = ["FaultEvent", "Message", "Scenario"]

_NO_TS = np.zeros(0, np.int64)
_MAX_EVENTS = 100_000
_BLOCK_CELLS = 2_000_000  # ticks x items computed at once (memory: a few arrays of this)
_GAP_S = (600.0, 7200.0)  # how long gaps last


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message to publish, with what it should make of ingest."""

    topic: str
    payload: bytes
    send_at: float                 # simulated Unix time it is due
    retain: bool = False
    kind: str = "readings"         # readings | items | status
    gateway: int = -1              # index of the sending gateway (picks the connection)
    ts: np.ndarray = field(default_factory=lambda: _NO_TS, compare=False)  # its good readings' times
    quarantine: tuple[tuple[str, int], ...] = ()  # expected quarantine rows by reason
    tags: frozenset[str] = frozenset()            # backfill, duplicate, late, malformed, foreign


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """Something the scenario did to the data: kind is gap, reset, spike, rollover or
    replacement (a recorded meter replacement, :attr:`Scenario.replacements`)."""

    kind: str
    enterprise: str
    gateway: str
    code: str | None  # None: the whole gateway (a gap)
    ts: int           # the first tick it affects
    until: int | None = None  # gaps: first tick sent again


@dataclass(slots=True)
class _Gw:
    enterprise: Enterprise
    gateway: Gateway
    cols: slice
    codes: list[str]
    cumulative: np.ndarray  # global indices of its cumulative items
    seq: int
    offset: float           # seconds after a tick its frame leaves
    foreign: str            # an invalid credit code for foreign frames
    prefix: str = ""

    @property
    def topic(self) -> str:
        return f"{self.prefix}/readings"


class Scenario:
    def __init__(
        self,
        enterprises: Sequence[Enterprise],
        *,
        seed: int,
        start: int,
        interval_s: int = 60,
        duration_s: float | None = None,
        backfill_s: float = 0.0,
        faults: FaultSpec = NO_FAULTS,
        limits: Limits = DEFAULT_LIMITS,
        live_block: int = 1,
        replacement: PlannedReplacement | None = None,
    ) -> None:
        if interval_s < 1:
            raise ValueError("interval must be at least 1 s")
        self.enterprises = tuple(enterprises)
        self.interval = int(interval_s)
        # Ticks fall on multiples of the interval, like gateways' polling schedules.
        self.start = -(-int(start) // self.interval) * self.interval
        self.live_ticks = None if duration_s is None else max(0, math.ceil(duration_s / self.interval))
        self.backfill_ticks = max(0, int(backfill_s // self.interval))
        self.begin = self.start - self.backfill_ticks * self.interval
        self.faults = faults
        self.limits = limits
        self.live_block = max(1, live_block)
        self.plant = Plant(self.enterprises, seed=seed)
        self.meters = Meters(self.plant)
        self._rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
        layout = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
        self.gateways: list[_Gw] = []
        col = 0
        cum = self.plant.kind == KIND_CUMULATIVE
        for e in self.enterprises:
            foreign = invalid_credit_code(layout, e.region)
            for g in e.gateways:
                cols = slice(col, col + len(g.items))
                self.gateways.append(_Gw(
                    e, g, cols, [i.code for i in g.items],
                    col + np.flatnonzero(cum[cols]), int(layout.integers(0, 100_000)),
                    float(layout.uniform(0.5, min(30.0, self.interval / 2))), foreign,
                    f"nhjc/v1/{e.code}/{g.id}",
                ))
                col += len(g.items)
        self._owner = np.repeat(np.arange(len(self.gateways)), [len(g.codes) for g in self.gateways])
        self._enterprise_codes = {e.code: {i.code for i in e.items} for e in self.enterprises}
        self._gaps: list[tuple[int, int, int, int]] = []  # (from, until, first col, end col)
        self._held: list[tuple[float, int, list[Message]]] = []
        self._held_n = 0
        self._malformed_next = 0
        self.events: list[FaultEvent] = []
        # The planned meter replacement (done once its time is simulated) and what it did.
        self._replacement = replacement
        self.replacements: list[AppliedReplacement] = []
        self.stats: dict[str, int] = dict.fromkeys(
            ("rollovers", "resets", "spikes", "gaps", "gap_readings", "duplicates", "late",
             "malformed", "foreign"), 0)

    # ------------------------------------------------------------------ public

    @property
    def end(self) -> int | None:
        """Simulated time after the last live tick (None: runs until stopped)."""
        return None if self.live_ticks is None else self.start + self.live_ticks * self.interval

    def opening(self) -> list[Message]:
        """Each gateway's items config and ``online`` status, retained, before any reading."""
        out = []
        for n, gw in enumerate(self.gateways):
            out.append(Message(f"{gw.prefix}/items", items_payload(gw.gateway), self.begin,
                               retain=True, kind="items", gateway=n))
            out.append(Message(f"{gw.prefix}/status", b"online", self.begin, retain=True,
                               kind="status", gateway=n))
        return out

    def closing(self, at: float) -> list[Message]:
        """``offline``, retained, as a gateway says it when it shuts down cleanly."""
        return [Message(f"{gw.prefix}/status", b"offline", at, retain=True, kind="status", gateway=n)
                for n, gw in enumerate(self.gateways)]

    def status_will(self, gateway: int) -> tuple[str, bytes]:
        """Topic and payload of a gateway's MQTT last will."""
        return f"{self.gateways[gateway].prefix}/status", b"offline"

    def blocks(self) -> Iterator[list[Message]]:
        """Messages block by block (one block per live tick, or several ticks when
        ``live_block`` > 1), each list in send_at order."""
        cells = max(1, _BLOCK_CELLS // max(1, self.plant.n))
        for i in range(0, self.backfill_ticks, cells):
            times = self.begin + self.interval * np.arange(i, min(i + cells, self.backfill_ticks))
            yield self._block(times, backfill=True)
        k = 0
        step = min(self.live_block, cells)
        while self.live_ticks is None or k < self.live_ticks:
            m = step if self.live_ticks is None else min(step, self.live_ticks - k)
            yield self._block(self.start + self.interval * np.arange(k, k + m), backfill=False)
            k += m

    def drain(self, at: float | None = None) -> list[Message]:
        """Frames still held back (late faults): the gateway sends them after all."""
        out: list[Message] = []
        for due, _, msgs in sorted(self._held, key=lambda h: (h[0], h[1])):
            when = due if at is None else max(due, at)
            out.extend(replace(m, send_at=when) for m in msgs)
        self._held.clear()
        return out

    # ------------------------------------------------------------------ generation

    def _block(self, times: np.ndarray, *, backfill: bool) -> list[Message]:
        mask = np.ones((len(times), self.plant.n), bool)
        resets: list[tuple[int, int, float]] = []
        spikes: list[tuple[int, int, float]] = []
        if self.faults:
            self._data_faults(times, resets, spikes)
        for first, until, a, b in self._gaps:
            mask[(times >= first) & (times < until), a:b] = False
        self._gaps = [g for g in self._gaps if g[1] > times[-1]]
        replacements = self._replacements_in(times)
        total, flow = self.plant.consumption(times, self.interval)
        readout = self.meters.read(total, flow, resets=resets, spikes=spikes, replacements=replacements)
        for k, i, final in readout.replacements:
            plan = self._replacement
            assert plan is not None
            self.replacements.append(AppliedReplacement(plan.enterprise, plan.code, plan.at, final, plan.new_initial))
            self._event("replacement", int(self._owner[i]), self._item_code(i), int(times[k]))
        self.stats["gap_readings"] += int((~mask).sum())
        for kind, hits in (("rollover", readout.rollovers), ("reset", readout.resets),
                           ("spike", readout.spikes)):
            self.stats[kind + "s"] += len(hits)
            for k, i in hits:
                self._event(kind, int(self._owner[i]), self._item_code(i), int(times[k]))

        out: list[Message] = []
        for n, gw in enumerate(self.gateways):
            values = readout.values[:, gw.cols]
            keep = mask[:, gw.cols]
            if backfill:
                # As many ticks per frame as fit: a backlog goes out in big frames.
                per = max(1, (self.limits.max_readings - 1) // max(1, len(gw.codes)))
                groups = [slice(i, i + per) for i in range(0, len(times), per)]
                send_at = float(self.start) + gw.offset
            else:
                groups = [slice(k, k + 1) for k in range(len(times))]
            for rows in groups:
                if not backfill:
                    send_at = float(times[rows][0]) + gw.offset
                self._frames(n, gw, times[rows], values[rows], keep[rows], send_at, backfill, out)
        if self._held:
            due = [h for h in self._held if h[0] <= times[-1] + self.interval]
            if due:
                self._held = [h for h in self._held if h[0] > times[-1] + self.interval]
                for when, _, msgs in sorted(due, key=lambda h: (h[0], h[1])):
                    out.extend(replace(m, send_at=when) for m in msgs)
        out.sort(key=lambda m: m.send_at)
        return out

    def _replacements_in(self, times: np.ndarray) -> list[tuple[int, int, float, float]]:
        """The planned replacement, when it falls before one of these ticks (and after
        the tick before it): (tick, item, share of the interval passed, new initial)."""
        plan = self._replacement
        if plan is None or self.replacements or not times[0] - self.interval < plan.at <= times[-1]:
            return []
        for gw in self.gateways:
            if gw.enterprise.code == plan.enterprise and plan.code in gw.codes:
                k = int(np.searchsorted(times, plan.at))
                frac = 1.0 - (float(times[k]) - plan.at) / self.interval
                return [(k, gw.cols.start + gw.codes.index(plan.code), frac, plan.new_initial)]
        return []

    def _item_code(self, i: int) -> str:
        return self.plant.items[i].code

    def _event(self, kind: str, gw: int, code: str | None, ts: int, until: int | None = None) -> None:
        if len(self.events) < _MAX_EVENTS:
            g = self.gateways[gw]
            self.events.append(FaultEvent(kind, g.enterprise.code, g.gateway.id, code, ts, until))

    def _data_faults(self, times: np.ndarray, resets: list[tuple[int, int, float]],
                     spikes: list[tuple[int, int, float]]) -> None:
        rates = np.array([self.faults.rate(k) for k in ("gaps", "resets", "spikes")])
        if not rates.any():
            return
        # The gaps rate is the share of readings lost: gaps start that much less often
        # than once a tick, as they last (_GAP_S) many ticks on average.
        rates[0] /= max(2.0, (_GAP_S[0] + _GAP_S[1]) / 2 / self.interval)
        rng = self._rng
        u = rng.random((len(times), len(self.gateways), 3))
        for k, n, f in zip(*np.nonzero(u < rates), strict=True):
            gw = self.gateways[n]
            t = int(times[k])
            if f == 0:
                # 10 minutes to 2 hours without readings: the gateway's link, or one meter's bus.
                ticks = max(2, round(rng.uniform(*_GAP_S) / self.interval))
                until = t + ticks * self.interval
                if rng.random() < 0.5:
                    self._gaps.append((t, until, gw.cols.start, gw.cols.stop))
                    self._event("gap", int(n), None, t, until)
                else:
                    i = gw.cols.start + int(rng.integers(len(gw.codes)))
                    self._gaps.append((t, until, i, i + 1))
                    self._event("gap", int(n), self._item_code(i), t, until)
                self.stats["gaps"] += 1
            elif f == 1 and len(gw.cumulative):
                i = int(gw.cumulative[rng.integers(len(gw.cumulative))])
                resets.append((int(k), i, round(float(rng.uniform(0, 5)), 2)))
            elif f == 2:
                i = gw.cols.start + int(rng.integers(len(gw.codes)))
                spikes.append((int(k), i, float(rng.uniform(10, 100))))

    def _frames(self, n: int, gw: _Gw, times: np.ndarray, values: np.ndarray, keep: np.ndarray,
                send_at: float, backfill: bool, out: list[Message]) -> None:
        objs = readings(gw.codes, times, values, keep, gw.gateway.ts_style)
        if not objs:
            return
        ts = np.repeat(times.astype(np.int64), keep.sum(axis=1))
        pos = 0
        for chunk in pack(objs, self.limits, spare=1, spare_bytes=256):
            self._emit(n, gw, chunk, ts[pos:pos + len(chunk)], send_at, backfill, out)
            pos += len(chunk)

    def _emit(self, n: int, gw: _Gw, chunk: list[dict[str, object]], ts: np.ndarray,
              send_at: float, backfill: bool, out: list[Message]) -> None:
        gw.seq += 1
        frame: dict[str, object] = {"v": 1, "seq": gw.seq, "sent_at": rfc3339(send_at), "readings": chunk}
        tags = frozenset({"backfill"}) if backfill else frozenset()
        rng = self._rng
        u = rng.random(4) if self.faults else np.ones(4)
        reason = None
        quarantine: tuple[tuple[str, int], ...] = ()
        if u[2] < self.faults.rate("malformed"):
            reason = MALFORMED_REASONS[self._malformed_next % len(MALFORMED_REASONS)]
            self._malformed_next += 1
            self.stats["malformed"] += 1
            if reason in READING_REASONS:
                good = chunk[int(rng.integers(len(chunk)))]
                code, value = str(good["code"]), good["value"]
                assert isinstance(value, float)
                chunk = [*chunk, bad_reading(reason, rng, code=code, t=int(ts[0]), value=value,
                                             unknown_code=self._unknown(gw, code))]
                frame["readings"] = chunk
                quarantine = ((reason, 1),)
        payload = finish(orjson.dumps(frame))
        main = Message(gw.topic, payload, send_at, gateway=n, ts=ts, quarantine=quarantine,
                       tags=tags | ({"malformed"} if quarantine else set()))
        extra: list[Message] = []
        if reason is not None and reason not in READING_REASONS:
            if reason == "bad_topic":  # a gateway id with characters topics may not carry
                topic, body = f"nhjc/v1/{gw.enterprise.code}/{gw.gateway.id}号网关/readings", payload
            else:
                topic, body = gw.topic, broken_frame(reason, rng, frame, payload, self.limits.max_frame_bytes)
            extra.append(Message(topic, body, send_at, gateway=n, quarantine=((reason, 1),),
                                 tags=tags | {"malformed"}))
        if u[3] < self.faults.rate("foreign"):
            self.stats["foreign"] += 1
            extra.append(Message(f"nhjc/v1/{gw.foreign}/{gw.gateway.id}/readings", payload, send_at,
                                 gateway=n, quarantine=(("bad_enterprise", 1),), tags=tags | {"foreign"}))
        copies = [main]
        if u[0] < self.faults.rate("duplicates"):
            self.stats["duplicates"] += 1
            copies.append(replace(main, tags=main.tags | {"duplicate"}))
        if u[1] < self.faults.rate("late"):
            # Held back 2 to 15 ticks, then sent: after frames that were read later.
            self.stats["late"] += 1
            due = send_at + int(rng.integers(2, 16)) * self.interval
            self._held.append((due, self._held_n, [replace(m, tags=m.tags | {"late"}) for m in copies]))
            self._held_n += 1
        else:
            out.extend(copies)
        out.extend(extra)

    def _unknown(self, gw: _Gw, code: str) -> str:
        """A well-formed code this enterprise has not registered."""
        known = self._enterprise_codes[gw.enterprise.code]
        for usage in range(99, 0, -1):
            candidate = f"{code[:-2]}{usage:02d}"
            if candidate not in known:
                return candidate
        return "99-99-9999-999999-99"
