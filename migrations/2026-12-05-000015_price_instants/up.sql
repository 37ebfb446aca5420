-- Prices start at an instant, not at a period: a version applies to the calls
-- that arrive from its `effective_from` (a whole second) until the next
-- version's. A call is priced by the version in force when it arrived,
-- whenever its count reaches the database (see ARCHITECTURE.md, "Prices in
-- force at arrival").
--
-- The billing time zone is the server's configuration, not the database's:
-- payg sets `payg.billing_tz` on the migrating session (db::run_migrations),
-- and a period's first day becomes that day's first instant there.
-- Old code cannot read an instant where it expects a date: stop every
-- instance, migrate, then start the new release (README, "Upgrading").
CREATE FUNCTION pg_temp.billing_tz() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('payg.billing_tz', true), '') = '' THEN
        RAISE EXCEPTION 'set payg.billing_tz to the billing time zone before this migration (payg sets it when it migrates)';
    END IF;
    RETURN current_setting('payg.billing_tz');
END
$$;
SELECT pg_temp.billing_tz();

ALTER TABLE prices DROP CONSTRAINT prices_effective_from_check;
ALTER TABLE prices ALTER COLUMN effective_from TYPE timestamptz
    USING (effective_from::timestamp AT TIME ZONE pg_temp.billing_tz());
ALTER TABLE prices ADD CONSTRAINT prices_effective_from_whole_second
    CHECK (effective_from = date_trunc('second', effective_from));
COMMENT ON COLUMN prices.effective_from IS
    'the first instant (a whole second) this version prices; calls that arrive before it keep the previous version';

-- The calls of each (user, API, period) by the price version in force when
-- they arrived: what prices them. They add up to the usage_records row they
-- belong to, written by the same flush transaction with the same additive
-- upsert. price_id 0: no version was in force then (the API was free).
CREATE TABLE usage_prices (
    user_id      uuid    NOT NULL,
    api_id       integer NOT NULL,
    period       date    NOT NULL,
    price_id     integer NOT NULL CHECK (price_id >= 0),
    calls        bigint  NOT NULL DEFAULT 0 CHECK (calls >= 0),
    failed_calls bigint  NOT NULL DEFAULT 0 CHECK (failed_calls >= 0 AND failed_calls <= calls),
    -- A version that has priced calls can never be deleted (cancelled): the
    -- flush's insert and a cancellation's delete meet on this key.
    price_ref    integer GENERATED ALWAYS AS (nullif(price_id, 0)) STORED REFERENCES prices (id),
    PRIMARY KEY (user_id, api_id, period, price_id),
    FOREIGN KEY (user_id, api_id, period) REFERENCES usage_records (user_id, api_id, period)
);
-- Statements and close read one period's rows.
CREATE INDEX usage_prices_period_idx ON usage_prices (period);
-- A cancellation checks that no row refers to the version.
CREATE INDEX usage_prices_price_ref_idx ON usage_prices (price_ref);
COMMENT ON COLUMN usage_prices.price_id IS
    'the prices row in force when these calls arrived; 0 when none was (free)';

-- Calls counted before this migration were priced by the version in force at
-- their period's start; they keep it.
INSERT INTO usage_prices (user_id, api_id, period, price_id, calls, failed_calls)
SELECT r.user_id, r.api_id, r.period,
       coalesce((SELECT p.id FROM prices p
                 WHERE p.api_id = r.api_id
                   AND p.effective_from <= (r.period::timestamp AT TIME ZONE pg_temp.billing_tz())
                 ORDER BY p.effective_from DESC LIMIT 1), 0),
       r.calls, r.failed_calls
FROM usage_records r;

-- An invoice line is one API at one price version.
ALTER TABLE invoice_lines
    ADD COLUMN price_id integer NOT NULL DEFAULT 0 CHECK (price_id >= 0),
    ADD COLUMN price_effective_from timestamptz;
COMMENT ON COLUMN invoice_lines.price_id IS 'the price version of this line; 0 when none was in force (free)';
COMMENT ON COLUMN invoice_lines.price_effective_from IS 'when that version started; NULL when none was in force';

-- Lines issued before: the version their period was priced with. They are
-- immutable, so the guard steps aside for this one backfill.
ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_immutable;
UPDATE invoice_lines l
SET price_id = v.id, price_effective_from = v.effective_from
FROM (SELECT l2.invoice_id, l2.position, p.id, p.effective_from
      FROM invoice_lines l2
      JOIN invoices i ON i.id = l2.invoice_id
      CROSS JOIN LATERAL (SELECT p.id, p.effective_from FROM prices p
                          WHERE p.api_id = l2.api_id
                            AND p.effective_from <= (i.period::timestamp AT TIME ZONE pg_temp.billing_tz())
                          ORDER BY p.effective_from DESC LIMIT 1) p) v
WHERE l.invoice_id = v.invoice_id AND l.position = v.position;
ALTER TABLE invoice_lines ENABLE TRIGGER invoice_lines_immutable;
