-- Measuring instruments at the platforms: per target, what each instrument record
-- (kind 'gauge'), each verification period ('verify') and each recorded replacement
-- ('replace') must look like there, what the platform acknowledged, and the dataIndex
-- it gave the instrument.  Owned by uplink/ (uplink/meter_outbox.py).
--
-- `ref` tells apart the rows of one instrument and kind: '' for the instrument itself,
-- 'valid_from/valid_until' for a verification period, the replacement's id for a
-- replacement.  `payload` is the object the platform is sent (built from meters,
-- meter_verifications and meter_replacements when they change); `hash` is its digest,
-- `acked_hash` the digest the platform last acknowledged: a row is done when they agree.
-- Rows are never pruned: they hold the dataIndex and what the platform has.
CREATE TABLE uplink_meter_outbox (
    target            text NOT NULL,
    enterprise        text NOT NULL,
    ser_no            text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('gauge', 'verify', 'replace')),
    ref               text NOT NULL DEFAULT '',
    payload           jsonb NOT NULL,
    -- gauge: retired with no recorded replacement (Yunnan: operation delete)
    retired           boolean NOT NULL DEFAULT false,
    hash              text NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'acked', 'rejected')),
    next_attempt_at   timestamptz NOT NULL,
    queued_at         timestamptz NOT NULL,       -- when this content became pending
    attempts          integer NOT NULL DEFAULT 0, -- attempts for this content
    sent_at           timestamptz,
    acked_at          timestamptz,
    acked_hash        text,
    -- gauge: the platform's index of the instrument (Yunnan's dataIndex), quoted in
    -- later updates, deletes, verifications and replacements; NULL once deleted
    data_index        text,
    rejected_at       timestamptz,
    rejected_status   integer,
    rejected_reason   text,                       -- uplink.errors.REJECT_REASONS
    rejected_message  text,
    last_error        text,
    PRIMARY KEY (target, enterprise, ser_no, kind, ref)
);
CREATE INDEX uplink_meter_outbox_due ON uplink_meter_outbox (target, next_attempt_at) WHERE state = 'pending';
CREATE INDEX uplink_meter_outbox_rejected ON uplink_meter_outbox (target, rejected_at) WHERE state = 'rejected';
