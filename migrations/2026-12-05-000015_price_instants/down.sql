-- Run with payg.billing_tz set as for the up migration (db::run_migrations sets it).
ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_immutable;
ALTER TABLE invoice_lines DROP COLUMN price_effective_from, DROP COLUMN price_id;
ALTER TABLE invoice_lines ENABLE TRIGGER invoice_lines_immutable;
DROP VIEW usage_by_price;
DROP TABLE usage_prices;
ALTER TABLE prices DROP CONSTRAINT prices_effective_from_whole_second;
ALTER TABLE prices ALTER COLUMN effective_from TYPE date
    USING ((effective_from AT TIME ZONE coalesce(nullif(current_setting('payg.billing_tz', true), ''), 'UTC'))::date);
ALTER TABLE prices ADD CONSTRAINT prices_effective_from_check CHECK (extract(day FROM effective_from) = 1);
