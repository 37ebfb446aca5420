-- Entries with a method the old schema cannot hold carry prices and usage
-- (invoices were made from them): refuse rather than delete billing data.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM apis WHERE method NOT IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')) THEN
        RAISE EXCEPTION 'catalog entries use HEAD, OPTIONS or * (any); change or remove them before reverting';
    END IF;
END $$;
DROP TABLE api_upstreams;
ALTER TABLE apis DROP CONSTRAINT apis_method_check;
ALTER TABLE apis ADD CONSTRAINT apis_method_check CHECK (method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE'));
