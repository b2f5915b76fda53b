"""Driving the real thing from tests (the process, the gateway and the queries are in
tools, which benchmarks share): waiting for rows, readings to publish, and the exact
accounting of what a test sent against what arrived."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tools.process import count, query, wait_for


def wait_count(dsn: str, sql: str, expected: int, timeout: float = 30, *args: Any) -> None:
    wait_for(lambda: count(dsn, sql, *args) >= expected, timeout, f"{expected} from {sql!r}")
    got = count(dsn, sql, *args)
    assert got == expected, f"{sql!r}: {got} rows, expected {expected}"


def readings_for(codes: Iterable[str], start_s: int, n: int, step_s: int = 60, base: float = 1000.0) -> list[dict[str, Any]]:
    return [{"code": c, "ts": start_s + i * step_s, "value": base + i * 1.5 + k}
            for k, c in enumerate(codes) for i in range(n)]


# --- exact accounting after a fault ---------------------------------------------------------

def platform_records(url: str) -> list[dict[str, Any]]:
    """Every distinct record a mock platform has received (GET /_records)."""
    with urllib.request.urlopen(url + "/_records", timeout=5) as r:
        return json.loads(r.read())


def platform_control(url: str, **mode: Any) -> dict[str, Any]:
    """Change a mock platform's behaviour (POST /_control)."""
    req = urllib.request.Request(url + "/_control", data=json.dumps(mode).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@dataclass(frozen=True)
class Ledger:
    """What a test sent, to hold the result against.

    ``readings``: (enterprise, code, ts in µs) -> value of every valid reading published;
    ``bad``: (topic, reason) of every bad input mixed in, once per input;
    ``periods``: (enterprise, dataCode, statDate) -> dataValue of every 15-minute record
    each platform must end up with (items and the enterprise total);
    ``gateway``: the gateway name every topic of the ledger carries (quarantine rows are
    told apart by it)."""

    enterprises: tuple[str, ...]
    gateway: str
    readings: dict[tuple[str, str, int], float]
    bad: tuple[tuple[str, str], ...]
    periods: dict[tuple[str, str, str], float]


@dataclass(frozen=True)
class TargetAccount:
    expected: int
    received: int       # distinct records of the ledger's periods at the platform
    missing: int
    wrong: int          # received with another value than expected
    extra: int          # 15-minute records of the ledger's enterprises that were not expected


@dataclass(frozen=True)
class Account:
    """The outcome, held against a :class:`Ledger`."""

    published: int
    stored: int          # rows in readings for the ledger's enterprises
    duplicates: int      # rows beyond one per key (the key should make this 0)
    missing: int         # published keys not stored
    wrong: int           # stored with another value than published
    unexpected: int      # stored keys nobody published
    quarantine_expected: int
    quarantine_actual: int
    quarantine_missing: tuple[str, ...]     # "topic reason" of bad inputs without their row
    quarantine_unexpected: tuple[str, ...]  # rows matching no bad input
    quarantine_copies: tuple[str, ...]      # more rows for a bad input than it was sent (a redelivery)
    targets: dict[str, TargetAccount]

    @property
    def readings_ok(self) -> bool:
        return self.stored == self.published and not (self.duplicates or self.missing or self.wrong
                                                      or self.unexpected)

    @property
    def periods_ok(self) -> bool:
        return all(t.received == t.expected and not (t.missing or t.wrong or t.extra)
                   for t in self.targets.values())

    @property
    def caught_up(self) -> bool:
        """Everything sent has arrived (what waiting cannot mend, such as copies, aside)."""
        return self.readings_ok and self.periods_ok and not self.quarantine_missing

    @property
    def ok(self) -> bool:
        return (self.readings_ok and self.periods_ok
                and not (self.quarantine_missing or self.quarantine_unexpected or self.quarantine_copies))

    def problems(self) -> list[str]:
        out = [f"{name}: {v}" for name, v in (("duplicates", self.duplicates), ("missing", self.missing),
                                              ("wrong values", self.wrong), ("unexpected", self.unexpected))
               if v]
        if self.stored != self.published:
            out.append(f"stored {self.stored} of {self.published}")
        out += [f"quarantine {what}: {d}" for what, ds in (("missing", self.quarantine_missing),
                                                            ("unexpected", self.quarantine_unexpected),
                                                            ("copy", self.quarantine_copies)) for d in ds]
        for name, t in self.targets.items():
            if t.received != t.expected or t.missing or t.wrong or t.extra:
                out.append(f"{name}: {t}")
        return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def account(dsn: str, ledger: Ledger, platforms: dict[str, str]) -> Account:
    """Readings, quarantine and the platforms' records, held against ``ledger``."""
    ents = list(ledger.enterprises)
    rows = query(dsn, "SELECT enterprise, code, (extract(epoch FROM ts) * 1000000)::bigint, value"
                      " FROM readings WHERE enterprise = ANY(%s)", ents)
    stored: dict[tuple[str, str, int], float] = {}
    duplicates = 0
    for e, c, t, v in rows:
        duplicates += (e, c, t) in stored
        stored[(e, c, t)] = v
    want = ledger.readings
    missing = sum(k not in stored for k in want)
    wrong = sum(k in stored and not _close(stored[k], v) for k, v in want.items())
    unexpected = sum(k not in want for k in stored)

    got_q = Counter(query(dsn, "SELECT topic, reason FROM quarantine WHERE split_part(topic, '/', 4) = %s",
                          ledger.gateway))
    want_q = Counter(ledger.bad)
    extra = got_q - want_q
    q_missing = tuple(sorted(f"{t} {r}" for (t, r), n in (want_q - got_q).items() for _ in range(n)))
    q_unexpected = tuple(sorted(f"{t} {r}" for (t, r), n in extra.items() if (t, r) not in want_q
                                for _ in range(n)))
    q_copies = tuple(sorted(f"{t} {r}" for (t, r), n in extra.items() if (t, r) in want_q for _ in range(n)))

    targets = {}
    ent_set = set(ents)
    for name, url in platforms.items():
        got = {(r["enterpriseCode"], r["dataCode"], r["statDate"]): r["dataValue"]
               for r in platform_records(url) if r["statType"] == 0 and r["enterpriseCode"] in ent_set}
        periods = ledger.periods
        targets[name] = TargetAccount(
            expected=len(periods),
            received=sum(k in got for k in periods),
            missing=sum(k not in got for k in periods),
            wrong=sum(k in got and not _close(got[k], v) for k, v in periods.items()),
            extra=sum(k not in periods for k in got),
        )
    return Account(published=len(want), stored=len(rows), duplicates=duplicates, missing=missing, wrong=wrong,
                   unexpected=unexpected, quarantine_expected=sum(want_q.values()),
                   quarantine_actual=sum(got_q.values()), quarantine_missing=q_missing,
                   quarantine_unexpected=q_unexpected, quarantine_copies=q_copies, targets=targets)
