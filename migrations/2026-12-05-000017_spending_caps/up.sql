-- Spending caps. A user may cap what a period's usage charges them; finance
-- may set a cap of its own (the user can lower it, not raise or remove it)
-- and mark a user prepaid-only (they never spend past their credit). The
-- effective cap is the lower of the two.
ALTER TABLE users
    ADD COLUMN cap_user numeric CHECK (cap_user >= 0),
    ADD COLUMN cap_finance numeric CHECK (cap_finance >= 0),
    ADD COLUMN prepaid_only boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN users.cap_user IS 'the cap the user set on a period''s charge (major units), or NULL';
COMMENT ON COLUMN users.cap_finance IS 'the cap finance set on a period''s charge (major units), or NULL';
COMMENT ON COLUMN users.prepaid_only IS 'the user may not spend past their credit balance';

-- The authority over spending budget: what each instance was granted for a
-- (user, period) and has not yet accounted for, either by flushing the
-- calls it admitted (each call's reservation is released in the flush's
-- transaction) or by giving the unspent rest back. A grant is made only
-- while the period's charge bound plus every instance's held budget stays
-- within the cap (and, prepaid-only, the balance), under the user's row
-- lock. PostgreSQL holds it, so nothing a Redis restart loses can grant the
-- same budget twice.
CREATE TABLE spend_leases (
    user_id     uuid NOT NULL REFERENCES users (id),
    period      date NOT NULL CHECK (extract(day FROM period) = 1),
    instance_id uuid NOT NULL,
    held        numeric NOT NULL CHECK (held >= 0),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, period, instance_id)
);
COMMENT ON COLUMN spend_leases.held IS 'budget granted to the instance and not yet flushed or given back (major units)';
COMMENT ON COLUMN spend_leases.renewed_at IS 'the instance''s last grant or heartbeat: rows of an instance silent for an hour are reclaimed';
CREATE INDEX spend_leases_instance_idx ON spend_leases (instance_id);
