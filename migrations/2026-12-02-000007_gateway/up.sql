-- Gateway APIs: a catalog entry with an upstream is served by forwarding
-- the call to that upstream. Its route is then a public path prefix
-- (`/weather`), and its method may be `*` (any).
ALTER TABLE apis DROP CONSTRAINT apis_method_check;
ALTER TABLE apis ADD CONSTRAINT apis_method_check
    CHECK (method IN ('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', '*'));

CREATE TABLE api_upstreams (
    api_id             integer PRIMARY KEY REFERENCES apis (id),
    url                text    NOT NULL CHECK (url ~ '^https?://'),
    timeout_ms         integer NOT NULL CHECK (timeout_ms BETWEEN 1 AND 3600000),
    connect_timeout_ms integer NOT NULL CHECK (connect_timeout_ms BETWEEN 1 AND 600000),
    max_body_bytes     bigint  NOT NULL CHECK (max_body_bytes >= 0),
    preserve_host      boolean NOT NULL DEFAULT false,
    -- payg signs every forwarded call with it (HMAC needs the secret itself,
    -- so it is stored, like a webhook secret).
    signing_secret     text    NOT NULL,
    -- After a rotation the previous secret signs too, until it expires.
    previous_signing_secret    text,
    previous_secret_expires_at timestamptz,
    CHECK ((previous_signing_secret IS NULL) = (previous_secret_expires_at IS NULL))
);
