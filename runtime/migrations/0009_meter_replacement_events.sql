-- Meter events of recorded meter replacements (table meter_replacements).  The event sits
-- on the first reading after the replacement time, like a reset's, and says what became
-- of the register's jump there:
--   replacement          the record was applied: the jump is known consumption
--   replacement_refused  the readings contradict the record: the segment stays an
--                        unknown reset; reason says why (old_below, old_rollover,
--                        new_below, new_rollover, several)
-- value_before / value_after stay the readings either side of the jump (the last old
-- reading and the first new one); the record's own values are in meter_replacements.
ALTER TABLE meter_events DROP CONSTRAINT meter_events_kind_check;
ALTER TABLE meter_events ADD CONSTRAINT meter_events_kind_check
    CHECK (kind IN ('rollover', 'reset', 'replacement', 'replacement_refused'));
ALTER TABLE meter_events ADD COLUMN reason text NOT NULL DEFAULT '';

