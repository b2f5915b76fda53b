"""Quality flag bits of a reading (``readings.quality``, a smallint bitmask).

Ingest sets EARLY and LATE when it stores a reading; processing sets the rest when it
validates an item's readings.  A flagged reading is kept, never dropped: the flags say
why the periods resting on it are not ``valid``.  Bit values are part of the stored data
(operators query them), so they never change meaning; new flags take new bits.
"""

from __future__ import annotations

__all__ = [
    "EARLY",
    "FLAG_NAMES",
    "INGEST_FLAGS",
    "LATE",
    "NON_FINITE",
    "OUT_OF_LINE",
    "OUT_OF_RANGE",
    "PROCESSING_FLAGS",
    "RESET",
    "ROLLOVER",
    "SPIKE",
    "STICKY",
    "STUCK",
    "SUSPECT",
    "UNVERIFIED",
    "names",
]

EARLY = 1  # ts ahead of its arrival by more than the tolerance (set by ingest)
LATE = 2  # older than the late horizon at arrival (set by ingest)
NON_FINITE = 4  # value is NaN or infinite (ingest rejects these; kept for old/loaded data)
OUT_OF_RANGE = 8  # instant value, or hourly rate of consumption, outside the item's min/max
ROLLOVER = 16  # the register wrapped at its rollover value just before this reading
RESET = 32  # the register went down with no rollover to explain it (reset or new meter)
SPIKE = 64  # the consumption rate up to this reading is beyond the item's plausible maximum
STUCK = 128  # the register has not moved for a long time while the enterprise's others did
# Arrived when its item already had a reading far later (processing.out_of_line_s): a
# gateway's clock error or one stray old value.  Judged once, at arrival order, so kept.
OUT_OF_LINE = 256
# The instrument measuring the item was not in verification on the reading's local date:
# past its nextAlignDate, or neither verified nor calibrated (processing.verification).
UNVERIFIED = 512

INGEST_FLAGS = EARLY | LATE
PROCESSING_FLAGS = NON_FINITE | OUT_OF_RANGE | ROLLOVER | RESET | SPIKE | STUCK | OUT_OF_LINE | UNVERIFIED
# Flags a recomputation keeps as stored: they depend on when a reading arrived, which a
# recomputation of its surroundings cannot tell again.
STICKY = INGEST_FLAGS | OUT_OF_LINE

# Flags that make a period resting on the reading not valid.  LATE is not suspect: a
# backfill after an outage is normal and its values are as good as on-time ones; a
# ROLLOVER is explained, so its consumption is trusted too.  UNVERIFIED is suspect unless
# the setting processing.unverified is "flag" (processing drops it from this mask then).
SUSPECT = EARLY | NON_FINITE | OUT_OF_RANGE | RESET | SPIKE | STUCK | OUT_OF_LINE | UNVERIFIED

FLAG_NAMES: dict[int, str] = {
    EARLY: "early",
    LATE: "late",
    NON_FINITE: "non_finite",
    OUT_OF_RANGE: "out_of_range",
    ROLLOVER: "rollover",
    RESET: "reset",
    SPIKE: "spike",
    STUCK: "stuck",
    OUT_OF_LINE: "out_of_line",
    UNVERIFIED: "unverified",
}


def names(quality: int) -> list[str]:
    """The names of the flags set in ``quality``, lowest bit first."""
    return [name for bit, name in FLAG_NAMES.items() if quality & bit]
