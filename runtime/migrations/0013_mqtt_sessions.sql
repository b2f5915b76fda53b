-- The persistent MQTT sessions of the instances sharing the readings (mqtt.shared_group).
-- Each instance registers its client id here when it connects; while it runs it holds
-- the session's advisory lock.  A peer that gets that lock knows the instance is gone:
-- it adopts the session (connects as that client id), stores what the broker kept there,
-- unsubscribes it and marks it drained.  An instance that comes back clears the mark.
CREATE TABLE mqtt_sessions (
    client_id     text PRIMARY KEY,
    shared_group  text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    drained_at    timestamptz,                -- NULL while the session is subscribed
    drained_by    text                        -- the client id of the instance that drained it
);
CREATE INDEX mqtt_sessions_group ON mqtt_sessions (shared_group) WHERE drained_at IS NULL;
