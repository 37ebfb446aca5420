-- Price versions: a price applies from the start of a period until the next
-- version's period. Versions are never edited once calls were made under
-- them; a change is a new row.
CREATE TABLE prices (
    id             serial PRIMARY KEY,
    api_id         integer NOT NULL REFERENCES apis (id),
    effective_from date NOT NULL CHECK (extract(day FROM effective_from) = 1),
    currency       text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    unit_price     numeric NOT NULL CHECK (unit_price >= 0),
    free_calls     bigint NOT NULL DEFAULT 0 CHECK (free_calls >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (api_id, effective_from)
);
COMMENT ON COLUMN prices.unit_price IS 'price of one billable call in major units of currency (exact, any scale)';

-- Optional graduated tiers: calls beyond the free allowance are charged
-- tier by tier; the last tier has no upper bound.
CREATE TABLE price_tiers (
    price_id   integer NOT NULL REFERENCES prices (id) ON DELETE CASCADE,
    position   integer NOT NULL CHECK (position >= 0),
    up_to      bigint CHECK (up_to > 0),
    unit_price numeric NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (price_id, position)
);
COMMENT ON COLUMN price_tiers.up_to IS 'cumulative charged calls this tier covers; NULL = unbounded';
COMMENT ON COLUMN price_tiers.unit_price IS 'price of one call in this tier, major units (exact)';

INSERT INTO prices (api_id, effective_from, unit_price)
SELECT id, DATE '1970-01-01', 0.001 FROM apis;

-- Periods that finance has closed (invoices issued).
CREATE TABLE closed_periods (
    period          date PRIMARY KEY CHECK (extract(day FROM period) = 1),
    closed_at       timestamptz NOT NULL DEFAULT now(),
    invoices_issued integer NOT NULL
);

-- Gapless invoice numbers per year: incremented inside the closing transaction.
CREATE TABLE invoice_sequences (
    year        integer PRIMARY KEY,
    last_number integer NOT NULL
);

CREATE TABLE invoices (
    id             uuid PRIMARY KEY,
    number         text NOT NULL UNIQUE,
    user_id        uuid NOT NULL REFERENCES users (id),
    period         date NOT NULL CHECK (extract(day FROM period) = 1),
    currency       text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal       numeric NOT NULL CHECK (subtotal >= 0),
    total          numeric NOT NULL CHECK (total >= 0),
    amount_paid    numeric NOT NULL DEFAULT 0 CHECK (amount_paid >= 0 AND amount_paid <= total),
    status         text NOT NULL CHECK (status IN ('issued', 'paid', 'void')),
    issued_at      timestamptz NOT NULL,
    due_at         timestamptz NOT NULL,
    paid_at        timestamptz,
    voided_at      timestamptz,
    billing_email  text NOT NULL,
    billing_name   text NOT NULL,
    billing_company       text,
    billing_address_line1 text,
    billing_address_line2 text,
    billing_city          text,
    billing_postal_code   text,
    billing_country       text,
    billing_tax_id        text,
    UNIQUE (user_id, period)
);
CREATE INDEX invoices_period_idx ON invoices (period, number);
CREATE INDEX invoices_status_due_idx ON invoices (user_id) WHERE status = 'issued';
COMMENT ON COLUMN invoices.subtotal IS 'sum of line amounts, major units, rounded to the currency minor unit';
COMMENT ON COLUMN invoices.total IS 'amount due, major units, rounded to the currency minor unit (= subtotal: no tax yet)';
COMMENT ON COLUMN invoices.amount_paid IS 'sum of payments, major units';

CREATE TABLE invoice_lines (
    invoice_id     uuid NOT NULL REFERENCES invoices (id),
    position       integer NOT NULL,
    api_id         integer NOT NULL REFERENCES apis (id),
    api_slug       text NOT NULL,
    api_name       text NOT NULL,
    calls          bigint NOT NULL,
    failed_calls   bigint NOT NULL,
    billable_calls bigint NOT NULL,
    free_calls     bigint NOT NULL,
    charged_calls  bigint NOT NULL,
    unit_price     numeric NOT NULL,
    amount         numeric NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (invoice_id, position)
);
COMMENT ON COLUMN invoice_lines.unit_price IS 'base unit price of the price version used, major units (exact)';
COMMENT ON COLUMN invoice_lines.amount IS 'line amount, major units, rounded half-even to the currency minor unit';

-- Issued invoices are immutable: lines never change, and an invoice row may
-- only move through its status (and record payments).
CREATE FUNCTION refuse_invoice_line_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'invoice lines are immutable';
END $$;
CREATE TRIGGER invoice_lines_immutable BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION refuse_invoice_line_change();

CREATE FUNCTION refuse_invoice_amount_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.number <> OLD.number OR NEW.user_id <> OLD.user_id OR NEW.period <> OLD.period
       OR NEW.currency <> OLD.currency OR NEW.subtotal <> OLD.subtotal OR NEW.total <> OLD.total
       OR NEW.issued_at <> OLD.issued_at OR NEW.billing_name <> OLD.billing_name
       OR NEW.billing_email <> OLD.billing_email THEN
        RAISE EXCEPTION 'issued invoices are immutable';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION refuse_invoice_amount_change();
CREATE TRIGGER invoices_undeletable BEFORE DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION refuse_invoice_line_change();

CREATE TABLE payments (
    id          uuid PRIMARY KEY,
    invoice_id  uuid NOT NULL REFERENCES invoices (id),
    amount      numeric NOT NULL CHECK (amount > 0),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reference   text NOT NULL UNIQUE,
    method      text NOT NULL,
    source      text NOT NULL CHECK (source IN ('finance', 'webhook')),
    recorded_by uuid REFERENCES users (id),
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_invoice_idx ON payments (invoice_id);
COMMENT ON COLUMN payments.amount IS 'amount received, major units of currency (exact)';

-- Payment-provider webhook events already applied (replays are ignored).
CREATE TABLE webhook_events (
    id          text PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
