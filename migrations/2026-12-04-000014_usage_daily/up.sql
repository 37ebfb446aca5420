-- Daily counts: one row per (user, API, day in the billing time zone),
-- written by the same flush transaction as usage_records, with the same
-- additive upsert (calls = usage_daily.calls + EXCLUDED.calls). Each row
-- belongs to the usage_records row of its period. A (user, API, period)
-- whose calls were all counted since this migration has days that add up to
-- its month; where they do not (calls counted before it, such as by an
-- instance still running older code in the month of an upgrade, or rows
-- imported into usage_records without days), the period is shown by its
-- monthly total only. Nothing records when this ran: the rows say it.
CREATE TABLE usage_daily (
    user_id      uuid    NOT NULL,
    api_id       integer NOT NULL,
    day          date    NOT NULL,
    -- The first day of day's month: the monthly row the day belongs to.
    period       date    NOT NULL,
    calls        bigint  NOT NULL DEFAULT 0 CHECK (calls >= 0),
    failed_calls bigint  NOT NULL DEFAULT 0 CHECK (failed_calls >= 0 AND failed_calls <= calls),
    PRIMARY KEY (user_id, api_id, day),
    CHECK (period = day - (extract(day FROM day)::integer - 1)),
    FOREIGN KEY (user_id, api_id, period) REFERENCES usage_records (user_id, api_id, period)
);

-- The chart's read: one user's days in a range, every API.
CREATE INDEX usage_daily_user_day_idx ON usage_daily (user_id, day);

COMMENT ON COLUMN usage_daily.day IS 'the calendar day the calls arrived on, in the billing time zone';
COMMENT ON COLUMN usage_daily.period IS 'first day of day''s calendar month: the usage_records row it belongs to';
