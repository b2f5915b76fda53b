-- A message whose commit outcome was lost (the service killed before its acknowledgement,
-- a connection cut during COMMIT) is delivered again.  Its readings are keyed and change
-- nothing; its quarantine rows are keyed now too: one row per distinct bad input, by a
-- fingerprint of what the row says (topic, reason, detail, raw), not of when it came.
ALTER TABLE quarantine ADD COLUMN fingerprint bytea;
UPDATE quarantine
   SET fingerprint = sha256(convert_to(topic || E'\n' || reason || E'\n' || detail || E'\n', 'UTF8') || raw);
DELETE FROM quarantine q USING quarantine o WHERE q.fingerprint = o.fingerprint AND q.id > o.id;
ALTER TABLE quarantine ALTER COLUMN fingerprint SET NOT NULL;
CREATE UNIQUE INDEX quarantine_fingerprint ON quarantine (fingerprint);
