-- Usage alerts and signed outbound webhooks.

-- A user's alerts: the charge thresholds of a period that each emit one
-- usage.threshold_reached, and the credit balance below which
-- credits.low is emitted.
CREATE TABLE usage_alerts (
    user_id           uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    thresholds        numeric[] NOT NULL DEFAULT '{}',
    credits_low_below numeric CHECK (credits_low_below > 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Where events go. `user_id` NULL: an admin's endpoint, for every user's
-- events; otherwise a consumer's, for their own. The secret must be kept
-- to sign (an HMAC needs it), like an upstream's signing secret.
CREATE TABLE webhook_endpoints (
    id                  uuid PRIMARY KEY,
    user_id             uuid REFERENCES users (id) ON DELETE CASCADE,
    url                 text NOT NULL,
    -- Empty: every event type.
    event_types         text[] NOT NULL DEFAULT '{}',
    description         text NOT NULL DEFAULT '',
    secret              text NOT NULL,
    -- After a rotation the previous secret signs too, until it expires.
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    disabled_at         timestamptz,
    created_by          uuid NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhook_endpoints_user ON webhook_endpoints (user_id);

-- The outbox: one row per event, written in the transaction of its cause.
-- `dedupe_key` makes an event happen once (one threshold per period, one
-- invoice issued, ...): a second insert with it changes nothing.
CREATE TABLE outbound_events (
    id          uuid PRIMARY KEY,
    event_type  text NOT NULL,
    user_id     uuid NOT NULL,
    dedupe_key  text NOT NULL UNIQUE,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL
);

-- One event to one endpoint, fanned out in the same transaction as the
-- event. `locked_until`: an instance is sending it (a killed instance's
-- claim lapses).
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    event_id         uuid NOT NULL REFERENCES outbound_events (id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    locked_until     timestamptz,
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id);

-- Every attempt, for the delivery log.
CREATE TABLE webhook_attempts (
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    attempted_at timestamptz NOT NULL,
    status       integer,
    error        text,
    duration_ms  integer NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
