-- The enterprise registry: who each enterprise is (its profile as the platforms'
-- configuration call carries it) and what each target needs for it.  Loaded by
-- `nhjc enterprises load`; the last load wins, every change is kept in the history.
CREATE TABLE enterprises (
    enterprise  text PRIMARY KEY,             -- unified social credit code (18 characters)
    name        text NOT NULL,
    -- county-level administrative code sent at registration; the credit code's
    -- characters 3-8 do not always give it (an enterprise moves, a district is split)
    region      text NOT NULL CHECK (region ~ '^[0-9]{6}$'),
    profile     jsonb NOT NULL DEFAULT '{}',  -- the configuration call's enterprise fields, by their wire names
    -- per target name: overrides that are not secret (a region for that platform)
    targets     jsonb NOT NULL DEFAULT '{}',
    -- per target name: credentials (a Yunnan pin and secret).  Kept apart from targets
    -- so that what lists or exports the registry never shows them by accident; only
    -- the uplink reads this column, by name.
    secrets     jsonb NOT NULL DEFAULT '{}',
    source      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every change, with its time and where it came from.  record holds the entry as
-- loaded except the secrets, whose names only are listed (with which of them changed),
-- so the history shows that a PIN was replaced without holding either PIN.
CREATE TABLE enterprises_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    enterprise  text NOT NULL,
    source      text NOT NULL,
    record      jsonb NOT NULL
);
CREATE INDEX enterprises_history_enterprise ON enterprises_history (enterprise, changed_at);
