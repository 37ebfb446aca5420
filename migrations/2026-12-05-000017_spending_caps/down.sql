DROP TABLE spend_leases;
ALTER TABLE users DROP COLUMN prepaid_only, DROP COLUMN cap_finance, DROP COLUMN cap_user;
