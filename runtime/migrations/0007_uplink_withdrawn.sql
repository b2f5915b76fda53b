-- A period the uplink sent whose coverage later fell to 0 (or whose consumption row is
-- gone) is withdrawn: nothing is sent for it (the platforms have no call to delete a
-- record, and a value nobody measured must not be sent), the row says so and when.
-- It becomes pending again if its period is measured again (a new revision).
ALTER TABLE uplink_outbox DROP CONSTRAINT uplink_outbox_state_check;
ALTER TABLE uplink_outbox ADD CONSTRAINT uplink_outbox_state_check
    CHECK (state IN ('pending', 'acked', 'rejected', 'withdrawn'));
ALTER TABLE uplink_outbox ADD COLUMN withdrawn_at timestamptz;
