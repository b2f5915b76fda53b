-- The platforms' scorecard, computed ahead of them (processing/scorecard.py): per
-- enterprise and local day (period 'day') or local month (period 'month', period_start
-- its 1st).  Rewritten whole for each day or month the scorecard job recomputes.
CREATE TABLE quality_daily (
    enterprise       text NOT NULL,
    period           text NOT NULL CHECK (period IN ('day', 'month')),
    period_start     date NOT NULL,               -- local date (the 1st for a month)
    items            integer NOT NULL,            -- registered items counted
    expected         bigint NOT NULL,             -- 15-minute values expected (items x settled periods)
    received         bigint NOT NULL,             -- of which a consumption row with coverage > 0
    items_complete   integer NOT NULL,            -- items with at least 90 % of their values
    -- day: the sum of an item's 15-minute values against its day value; month: the sum
    -- of its day values against its month value; agreeing when within 5 %
    agreement_items  integer NOT NULL,
    agreement_ok     integer NOT NULL,
    -- received 15-minute values, and those whose start has a reading within 60 s
    start_values     bigint NOT NULL,
    start_pinned     bigint NOT NULL,
    -- instruments in service, and those in verification (a month: instrument-days)
    meters           integer NOT NULL,
    meters_verified  integer NOT NULL,
    completeness     double precision GENERATED ALWAYS AS
                         (CASE WHEN expected > 0 THEN received::double precision / expected END) STORED,
    agreement        double precision GENERATED ALWAYS AS
                         (CASE WHEN agreement_items > 0 THEN agreement_ok::double precision / agreement_items END) STORED,
    start_accuracy   double precision GENERATED ALWAYS AS
                         (CASE WHEN start_values > 0 THEN start_pinned::double precision / start_values END) STORED,
    verification     double precision GENERATED ALWAYS AS
                         (CASE WHEN meters > 0 THEN meters_verified::double precision / meters END) STORED,
    computed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (period, period_start, enterprise)
);
CREATE INDEX quality_daily_enterprise ON quality_daily (enterprise, period, period_start);

-- The same per item and day or month: how complete each item is, how many of its values
-- have their start pinned by a reading, and whether its finer values add up to its
-- coarser one (day: its 15-minute values against its day value; month: its day values
-- against its month value).  agrees is NULL where nothing is compared: instant items,
-- which are averages, and items with neither finer nor coarser values.  The month rows
-- are sums of the day rows, so a month never reads its 15-minute values again.
CREATE TABLE quality_items (
    enterprise    text NOT NULL,
    code          text NOT NULL,
    period        text NOT NULL CHECK (period IN ('day', 'month')),
    period_start  date NOT NULL,
    expected      bigint NOT NULL,
    received      bigint NOT NULL,
    pinned        bigint NOT NULL,
    parts_sum     double precision,               -- sum of the finer values (coverage > 0)
    whole_value   double precision,               -- the coarser value (coverage > 0)
    agrees        boolean,
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (period, period_start, enterprise, code)
);
