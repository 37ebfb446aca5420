-- Long-lived API keys. Only a keyed hash (HMAC-SHA256 with a server
-- secret) is stored; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id),
    name         text NOT NULL,
    prefix       text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id) WHERE revoked_at IS NULL;
COMMENT ON COLUMN api_keys.key_hash IS 'hex HMAC-SHA256 of the key with PAYG_API_KEY_SECRET; never the key';

-- Refresh tokens, rotated on every use. A family is one login session:
-- presenting a retired token again revokes the whole family.
CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY,
    family_id   uuid NOT NULL,
    user_id     uuid NOT NULL REFERENCES users (id),
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    retired_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
COMMENT ON COLUMN refresh_tokens.token_hash IS 'hex HMAC-SHA256 of the token; never the token';
