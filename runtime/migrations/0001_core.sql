-- Core schema: the public relations of the wire contract, version 1 (readings, consumption, quarantine, items).
CREATE EXTENSION IF NOT EXISTS timescaledb;

-- The data-item registry: the last writer (MQTT items topic or `nhjc items load`) wins.
CREATE TABLE items (
    enterprise   text NOT NULL,
    code         text NOT NULL,
    name         text NOT NULL DEFAULT '',
    energy       text NOT NULL,
    unit         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('cumulative', 'interval', 'instant')),
    multiplier   double precision NOT NULL DEFAULT 1,
    rollover     double precision,
    min          double precision,
    max          double precision,
    scope        smallint NOT NULL DEFAULT 1 CHECK (scope BETWEEN 1 AND 4),
    input_type   smallint NOT NULL DEFAULT 4 CHECK (input_type BETWEEN 1 AND 5),
    coefficient  double precision,
    source       text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise, code)
);

-- Every change to the registry, with its time and where it came from.
CREATE TABLE items_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    enterprise  text NOT NULL,
    code        text NOT NULL,
    source      text NOT NULL,
    item        jsonb NOT NULL
);
CREATE INDEX items_history_item ON items_history (enterprise, code, changed_at);

CREATE TABLE readings (
    enterprise   text NOT NULL,
    code         text NOT NULL,
    ts           timestamptz NOT NULL,
    value        double precision NOT NULL,
    quality      smallint NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (enterprise, code, ts)
);
-- The primary key serves every lookup (by item and time); no separate time index.
SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'), create_default_indexes => false);

-- revision changes whenever a row's value, kgce, valid or coverage changes, so the
-- uplink can tell which periods a target has not yet received in their latest form.
CREATE SEQUENCE consumption_revision;
CREATE TABLE consumption (
    enterprise    text NOT NULL,
    code          text NOT NULL,
    stat_type     smallint NOT NULL CHECK (stat_type BETWEEN 0 AND 3),
    period_start  timestamptz NOT NULL,
    value         double precision NOT NULL,
    kgce          double precision NOT NULL,
    valid         boolean NOT NULL,
    coverage      double precision NOT NULL CHECK (coverage BETWEEN 0 AND 1),
    computed_at   timestamptz NOT NULL DEFAULT now(),
    revision      bigint NOT NULL DEFAULT nextval('consumption_revision'),
    PRIMARY KEY (enterprise, code, stat_type, period_start)
);
SELECT create_hypertable('consumption', by_range('period_start', INTERVAL '30 days'));
CREATE INDEX consumption_revision_idx ON consumption (revision, period_start);

CREATE TABLE quarantine (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    enterprise   text,
    reason       text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    raw          bytea NOT NULL
);
CREATE INDEX quarantine_received ON quarantine (received_at);
CREATE INDEX quarantine_reason ON quarantine (reason, received_at);

-- Work list for the aggregator: written in the same transaction as the readings, so
-- a crash between storing readings and recomputing their periods loses nothing.
CREATE TABLE pending_recompute (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enterprise  text NOT NULL,
    code        text NOT NULL,
    from_ts     timestamptz NOT NULL,
    to_ts       timestamptz NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now()
);
