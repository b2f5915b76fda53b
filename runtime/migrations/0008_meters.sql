-- Measuring instruments (计量器具台账): which instrument measures which item, how good
-- it is and whether it was verified.  Loaded by `nhjc meters load`; the last load wins,
-- every change is kept in the history.  Field names follow the platforms' instrument
-- records (serNo -> ser_no, meterLevel -> meter_level, ...).
CREATE TABLE meters (
    enterprise       text NOT NULL,               -- unified social credit code
    ser_no           text NOT NULL,               -- the instrument's serial number
    meter_name       text NOT NULL,
    meter_type       text NOT NULL DEFAULT '',
    -- GB 17167's levels: 1 the enterprise's incoming and outgoing energy, 2 secondary
    -- units, 3 main energy-using equipment
    meter_level      smallint NOT NULL CHECK (meter_level BETWEEN 1 AND 3),
    data_codes       text[] NOT NULL DEFAULT '{}', -- the items it measures (hyphenated codes)
    report_ratio     double precision NOT NULL DEFAULT 1 CHECK (report_ratio > 0),
    precision_level  text NOT NULL DEFAULT '',     -- accuracy class as written: '0.5S', '1.0', '2'
    manufacturer     text NOT NULL DEFAULT '',
    model            text NOT NULL DEFAULT '',
    install_place    text NOT NULL DEFAULT '',
    -- verified (检定), calibrated (校准) or none (neither, or unknown)
    align_state      text NOT NULL CHECK (align_state IN ('verified', 'calibrated', 'none')),
    align_cycle      smallint CHECK (align_cycle > 0),  -- months
    last_align_date  date,
    next_align_date  date,
    align_org        text NOT NULL DEFAULT '',
    -- when the instrument stopped measuring its items (replaced or removed); a retired
    -- instrument stays listed, so that what it measured keeps its record
    retired_at       timestamptz,
    source           text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise, ser_no),
    CHECK (next_align_date IS NULL OR last_align_date IS NULL OR next_align_date >= last_align_date)
);
CREATE INDEX meters_data_codes ON meters USING gin (data_codes);

-- Every change, with its time and where it came from (record: the entry as loaded).
CREATE TABLE meters_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    enterprise  text NOT NULL,
    ser_no      text NOT NULL,
    source      text NOT NULL,
    record      jsonb NOT NULL
);
CREATE INDEX meters_history_meter ON meters_history (enterprise, ser_no, changed_at);

-- The verification periods ever recorded for an instrument: each load of a verified or
-- calibrated instrument with both dates adds its [valid_from, valid_until] (local dates,
-- both inclusive).  Rows are never removed or shortened, so a later verification adds a
-- period and never makes earlier readings valid.
CREATE TABLE meter_verifications (
    enterprise   text NOT NULL,
    ser_no       text NOT NULL,
    valid_from   date NOT NULL,
    valid_until  date NOT NULL,
    align_state  text NOT NULL CHECK (align_state IN ('verified', 'calibrated')),
    align_org    text NOT NULL DEFAULT '',
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise, ser_no, valid_from, valid_until),
    CHECK (valid_until >= valid_from)
);

-- A recorded meter replacement on one item: at replaced_at the old instrument's register
-- read old_final and the new one's new_initial.  Processing turns the register's jump at
-- that time into known consumption (a meter event) instead of an unknown reset.
CREATE TABLE meter_replacements (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enterprise   text NOT NULL,
    code         text NOT NULL,                  -- the item (hyphenated data code)
    replaced_at  timestamptz NOT NULL,
    old_ser_no   text NOT NULL DEFAULT '',
    new_ser_no   text NOT NULL DEFAULT '',
    old_final    double precision NOT NULL,      -- register values as the meters show them
    new_initial  double precision NOT NULL,      -- (before the item's multiplier)
    source       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enterprise, code, replaced_at)
);
