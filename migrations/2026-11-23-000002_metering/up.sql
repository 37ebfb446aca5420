-- The catalog of metered APIs. A call is matched by HTTP method and the
-- route pattern as actix matches it (never the raw path), so path
-- parameters cannot explode the number of rows.
CREATE TABLE apis (
    id          serial PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]*$'),
    method      text NOT NULL CHECK (method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')),
    route       text NOT NULL CHECK (route LIKE '/%'),
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (method, route)
);

INSERT INTO apis (slug, method, route, name, description) VALUES
    ('tools-uuid',       'GET',  '/api/v1/tools/uuid',         'UUID generator',  'A random version 4 UUID.'),
    ('tools-random',     'GET',  '/api/v1/tools/random',       'Random integer',  'A uniformly random integer between min and max (inclusive).'),
    ('tools-random-max', 'GET',  '/api/v1/tools/random/{max}', 'Random up to max','A uniformly random integer between 0 and max (inclusive).'),
    ('tools-hash',       'POST', '/api/v1/tools/hash',         'Hash',            'SHA-256 or SHA-512 digest of a string, hex encoded.'),
    ('tools-time',       'GET',  '/api/v1/tools/time',         'World time',      'The current time in an IANA time zone.'),
    ('tools-echo',       'POST', '/api/v1/tools/echo',         'Echo',            'Returns the JSON body it was sent.');

-- One row per (user, API, period). Counters only ever change through
-- additive upserts (calls = usage_records.calls + EXCLUDED.calls).
CREATE TABLE usage_records (
    user_id      uuid   NOT NULL REFERENCES users (id),
    api_id       integer NOT NULL REFERENCES apis (id),
    period       date   NOT NULL CHECK (extract(day FROM period) = 1),
    calls        bigint NOT NULL DEFAULT 0 CHECK (calls >= 0),
    failed_calls bigint NOT NULL DEFAULT 0 CHECK (failed_calls >= 0 AND failed_calls <= calls),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, api_id, period)
);

CREATE INDEX usage_records_period_idx ON usage_records (period);

COMMENT ON COLUMN usage_records.period IS 'first day of the calendar month in the billing time zone';

-- Every batched flush inserts its id here in the same transaction as its
-- counter increments, so a flush whose COMMIT outcome was lost can be
-- retried without ever being applied twice.
CREATE TABLE meter_flushes (
    id          uuid PRIMARY KEY,
    instance_id uuid NOT NULL,
    rows        integer NOT NULL,
    calls       bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX meter_flushes_applied_at_idx ON meter_flushes (applied_at);
