-- Uplink delivery state: per target and record, what was sent, what the
-- platform acknowledged or rejected, and when to try again.  Owned by uplink/.

-- One row per target and consumption key.  `revision` is the latest consumption
-- revision the target must receive; a row is done when it is acked at that revision.
CREATE TABLE uplink_outbox (
    target            text NOT NULL,
    enterprise        text NOT NULL,
    code              text NOT NULL,
    stat_type         smallint NOT NULL,
    period_start      timestamptz NOT NULL,
    revision          bigint NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'acked', 'rejected')),
    due_at            timestamptz NOT NULL,       -- the schedule's first send time
    next_attempt_at   timestamptz NOT NULL,       -- due_at, then pushed back by failures
    queued_at         timestamptz NOT NULL,       -- when this content became pending
    attempts          integer NOT NULL DEFAULT 0, -- attempts for this content
    sent_at           timestamptz,                -- the last request carrying the record
    sent_revision     bigint,
    sent_value        double precision,
    acked_at          timestamptz,
    acked_revision    bigint,
    rejected_at       timestamptz,
    rejected_status   integer,                    -- the platform's HTTP status
    rejected_message  text,                       -- the platform's message, verbatim
    last_error        text,                       -- why the last attempt failed
    PRIMARY KEY (target, enterprise, code, stat_type, period_start)
);
-- The sender's work list, and the backlog gauge.
CREATE INDEX uplink_outbox_due ON uplink_outbox (target, next_attempt_at, enterprise) WHERE state = 'pending';
CREATE INDEX uplink_outbox_rejected ON uplink_outbox (target, rejected_at) WHERE state = 'rejected';
CREATE INDEX uplink_outbox_acked ON uplink_outbox (target, acked_at) WHERE state = 'acked';

-- Per target and statType: periods starting in [since, through) have been put in the
-- outbox by the schedule; `since` is where the target's history starts (late changes
-- to earlier periods are not sent).
CREATE TABLE uplink_window (
    target     text NOT NULL,
    stat_type  smallint NOT NULL CHECK (stat_type BETWEEN 0 AND 3),
    since      timestamptz NOT NULL,
    through    timestamptz NOT NULL,
    PRIMARY KEY (target, stat_type)
);

-- Per target: every consumption revision up to `revision` has been looked at (late
-- data after a period was enqueued re-enters the outbox through this cursor).
CREATE TABLE uplink_cursor (
    target    text PRIMARY KEY,
    revision  bigint NOT NULL
);

-- Per target and enterprise: what the platform told us at registration and when the
-- item configuration last went out.  The due time of days, months and years follows
-- the device's upload time when the platform gave one.
CREATE TABLE uplink_device (
    target          text NOT NULL,
    enterprise      text NOT NULL,
    device_id       text,
    info_url        text,
    data_url        text,
    upload_time     time,
    registered_at   timestamptz,
    config_hash     text,
    config_items    integer,
    config_sent_at  timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    PRIMARY KEY (target, enterprise)
);

-- For operators and Grafana: one row per target.
CREATE VIEW uplink_status AS
SELECT target,
       count(*) FILTER (WHERE state = 'pending')                      AS pending,
       count(*) FILTER (WHERE state = 'pending' AND attempts > 0)     AS failing,
       count(*) FILTER (WHERE state = 'acked')                        AS acked,
       count(*) FILTER (WHERE state = 'rejected')                     AS rejected,
       min(greatest(due_at, queued_at)) FILTER (WHERE state = 'pending') AS oldest_pending,
       max(acked_at)                                                  AS last_ack
FROM uplink_outbox
GROUP BY target;
