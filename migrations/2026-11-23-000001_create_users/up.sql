-- Accounts: consumers, finance staff and admins.
CREATE TABLE users (
    id             uuid PRIMARY KEY,
    -- Stored lower-cased by the application; the unique index below is the
    -- real guarantee that two spellings of one address cannot both register.
    email          text NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    password_hash  text NOT NULL,
    role           text NOT NULL DEFAULT 'consumer' CHECK (role IN ('consumer', 'finance', 'admin')),
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    name           text NOT NULL,
    company        text,
    address_line1  text,
    address_line2  text,
    city           text,
    postal_code    text,
    country        text CHECK (country ~ '^[A-Z]{2}$'),
    tax_id         text,
    total_cost     numeric NOT NULL DEFAULT 0 CHECK (total_cost >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

COMMENT ON COLUMN users.password_hash IS 'argon2id PHC string; never the clear password';
COMMENT ON COLUMN users.total_cost IS 'lifetime priced usage in the billing currency (major units, exact numeric, unrounded scale kept)';
COMMENT ON COLUMN users.country IS 'ISO 3166-1 alpha-2';
