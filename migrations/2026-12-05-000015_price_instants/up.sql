-- Prices start at an instant, not at a period: a version applies to the calls
-- that arrive from its `effective_from` (a whole second) until the next
-- version's. A call is priced by the version in force when it arrived,
-- whenever its count reaches the database (see ARCHITECTURE.md, "Prices in
-- force at arrival").
--
-- The billing time zone is the server's configuration, not the database's:
-- payg sets `payg.billing_tz` on the migrating session (db::run_migrations),
-- and a period's first day becomes that day's first instant there.
CREATE FUNCTION pg_temp.billing_tz() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(nullif(current_setting('payg.billing_tz', true), ''), 'UTC')
$$;

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
    PRIMARY KEY (user_id, api_id, period, price_id),
    FOREIGN KEY (user_id, api_id, period) REFERENCES usage_records (user_id, api_id, period)
);
-- Statements and close read one period's rows.
CREATE INDEX usage_prices_period_idx ON usage_prices (period);
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

-- What statements, close and the flush's cost price: usage_prices, plus —
-- for a (user, API, period) whose month row holds calls its version rows do
-- not (counted by an instance still running the code from before this
-- migration, during a rolling upgrade, or rows imported into usage_records
-- alone) — the difference, priced as that code priced it: by the version in
-- force at the period's first instant. The billing zone is fixed here, when
-- the view is created, as the backfill above uses it.
DO $view$
BEGIN
EXECUTE format($sql$
CREATE VIEW usage_by_price AS
SELECT user_id, api_id, period, price_id,
       sum(calls)::bigint AS calls, sum(failed_calls)::bigint AS failed_calls
FROM (
    SELECT user_id, api_id, period, price_id, calls, failed_calls FROM usage_prices
    UNION ALL
    SELECT r.user_id, r.api_id, r.period,
           coalesce((SELECT p.id FROM prices p
                     WHERE p.api_id = r.api_id
                       AND p.effective_from <= (r.period::timestamp AT TIME ZONE %L)
                     ORDER BY p.effective_from DESC LIMIT 1), 0),
           r.calls - coalesce(v.calls, 0), r.failed_calls - coalesce(v.failed_calls, 0)
    FROM usage_records r
    LEFT JOIN (SELECT user_id, api_id, period, sum(calls) AS calls, sum(failed_calls) AS failed_calls
               FROM usage_prices GROUP BY user_id, api_id, period) v
      USING (user_id, api_id, period)
    WHERE r.calls <> coalesce(v.calls, 0) OR r.failed_calls <> coalesce(v.failed_calls, 0)
) u
GROUP BY user_id, api_id, period, price_id
$sql$, pg_temp.billing_tz());
END
$view$;

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
