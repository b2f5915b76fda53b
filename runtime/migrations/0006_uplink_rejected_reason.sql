-- Why the platform refused a record, from a short fixed list (uplink.errors.REJECT_REASONS:
-- http_4xx, unknown_code, refresh_failed, not_sendable), beside its status and its own
-- words; `nhjc uplink rejected` lists it.  NULL on rows refused before this column existed.
ALTER TABLE uplink_outbox ADD COLUMN rejected_reason text;
