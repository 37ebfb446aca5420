-- Run with payg.billing_tz set as for the up migration (db::run_migrations
-- sets it). Reversible only while every version starts at a month's first
-- instant in that zone: the old schema has no place for any other start, nor
-- for the per-version counts and invoice lines.
DO $$
BEGIN
    IF coalesce(current_setting('payg.billing_tz', true), '') = '' THEN
        RAISE EXCEPTION 'set payg.billing_tz to the billing time zone before reverting';
    END IF;
    IF EXISTS (SELECT 1 FROM prices
               WHERE effective_from >= '1971-01-01' AND effective_from <> date_trunc('month', effective_from AT TIME ZONE current_setting('payg.billing_tz'))
                                        AT TIME ZONE current_setting('payg.billing_tz')) THEN
        RAISE EXCEPTION 'a price version starts mid-month: this migration cannot be reverted';
    END IF;
END
$$;
ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_immutable;
ALTER TABLE invoice_lines DROP COLUMN price_effective_from, DROP COLUMN price_id;
ALTER TABLE invoice_lines ENABLE TRIGGER invoice_lines_immutable;
DROP TABLE usage_prices;
ALTER TABLE prices DROP CONSTRAINT prices_effective_from_whole_second;
ALTER TABLE prices ALTER COLUMN effective_from TYPE date
    USING ((effective_from AT TIME ZONE current_setting('payg.billing_tz'))::date);
ALTER TABLE prices ADD CONSTRAINT prices_effective_from_check CHECK (extract(day FROM effective_from) = 1);
