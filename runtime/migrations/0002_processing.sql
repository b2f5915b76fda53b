-- Processing: what the aggregator keeps besides the public consumption rows.

-- The OR of the quality flags of the readings a period rests on (ingest.quality
-- bits), so an operator can see why a period is not valid.  Not part of the public
-- columns; a change of flags alone does not bump the revision.
ALTER TABLE consumption ADD COLUMN flags smallint NOT NULL DEFAULT 0;

-- A cumulative register went down: a rollover the item's rollover value explains, or a
-- reset / meter replacement (the segment before ts has no known consumption).  One row
-- per reading at which it was seen; rewritten when the readings around it change.
CREATE TABLE meter_events (
    enterprise    text NOT NULL,
    code          text NOT NULL,
    ts            timestamptz NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('rollover', 'reset')),
    value_before  double precision NOT NULL,
    value_after   double precision NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise, code, ts)
);
CREATE INDEX meter_events_detected ON meter_events (detected_at);

-- Gap segments (longer than max_gap) that a day, month or year contains whole but that
-- cross one of its child periods' boundaries: no child period may take their
-- consumption, so the coarse period adds them to the sum of its children.  tier is the
-- stat_type of the finest period containing the segment whole (1 day, 2 month, 3
-- year); gaps inside one 15-minute period, or crossing a year boundary, are not kept.
-- amount: consumption in the item's unit (instant items: value integral, unit x s).
CREATE TABLE gap_segments (
    enterprise  text NOT NULL,
    code        text NOT NULL,
    t0          timestamptz NOT NULL,
    t1          timestamptz NOT NULL,
    tier        smallint NOT NULL CHECK (tier BETWEEN 1 AND 3),
    amount      double precision NOT NULL,
    flags       smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (enterprise, code, t0)
);

-- The aggregator takes all pending rows of the items it works on at once.
CREATE INDEX pending_recompute_item ON pending_recompute (enterprise, code, id);
