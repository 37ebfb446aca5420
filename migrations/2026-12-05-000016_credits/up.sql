-- Prepaid credit. A ledger of every movement is the source of truth: a
-- user's balance is the sum of their movements; `users.credit_balance` is
-- that sum kept beside it, written in the same transaction as each movement
-- (a property test compares the two).
ALTER TABLE users ADD COLUMN credit_balance numeric NOT NULL DEFAULT 0 CHECK (credit_balance >= 0);
COMMENT ON COLUMN users.credit_balance IS 'prepaid credit left: the sum of the user''s credit_movements (major units, exact)';

CREATE TABLE credit_movements (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    -- top_up: credit bought (finance, or a credits.purchased webhook event);
    -- usage: what a period's usage drew (one movement per user and period,
    -- growing as its calls are flushed); adjustment: credit given back (an
    -- invoice voided) or corrected.
    kind        text NOT NULL CHECK (kind IN ('top_up', 'usage', 'adjustment')),
    amount      numeric NOT NULL,
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- top_up: the idempotency key (a second top-up with the same reference
    -- is the same movement, or a conflict).
    reference   text,
    period      date,
    -- adjustment (void): the invoice whose credit came back.
    invoice_id  uuid REFERENCES invoices (id),
    source      text NOT NULL CHECK (source IN ('finance', 'webhook', 'usage', 'void')),
    recorded_by uuid REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'top_up' OR (amount > 0 AND reference IS NOT NULL)),
    CHECK (kind <> 'usage' OR (amount <= 0 AND period IS NOT NULL AND reference IS NULL)),
    CHECK (source <> 'void' OR (kind = 'adjustment' AND amount > 0 AND invoice_id IS NOT NULL))
);
COMMENT ON COLUMN credit_movements.amount IS 'signed, major units (exact): + adds credit, - draws it';
CREATE UNIQUE INDEX credit_movements_reference_idx ON credit_movements (reference) WHERE kind = 'top_up';
-- An invoice gives its credit back once.
CREATE UNIQUE INDEX credit_movements_void_idx ON credit_movements (invoice_id) WHERE source = 'void';
CREATE UNIQUE INDEX credit_movements_usage_idx ON credit_movements (user_id, period) WHERE kind = 'usage';
CREATE INDEX credit_movements_user_idx ON credit_movements (user_id, created_at DESC, id);

-- An invoice shows the credit its period drew; what is due is the rest.
ALTER TABLE invoices ADD COLUMN credit_applied numeric NOT NULL DEFAULT 0 CHECK (credit_applied >= 0);
COMMENT ON COLUMN invoices.credit_applied IS 'prepaid credit that paid part of the total at the close';
ALTER TABLE invoices ADD COLUMN amount_due numeric
    GENERATED ALWAYS AS (CASE WHEN status = 'void' THEN 0 ELSE total - credit_applied - amount_paid END) STORED;
COMMENT ON COLUMN invoices.amount_due IS 'what the invoice still asks for: total - credit_applied - amount_paid (0 once void)';
ALTER TABLE invoices
    ADD CONSTRAINT invoices_covered_at_most_once CHECK (credit_applied + amount_paid <= total),
    ADD CONSTRAINT invoices_paid_means_covered CHECK (status <> 'paid' OR credit_applied + amount_paid = total);

-- The credit applied is part of the frozen snapshot; payments cover the rest.
CREATE OR REPLACE FUNCTION refuse_invoice_amount_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.number, NEW.user_id, NEW.period, NEW.currency, NEW.subtotal, NEW.total,
        NEW.credit_applied, NEW.issued_at, NEW.due_at, NEW.billing_email, NEW.billing_name,
        NEW.billing_company, NEW.billing_address_line1, NEW.billing_address_line2, NEW.billing_city,
        NEW.billing_postal_code, NEW.billing_country, NEW.billing_tax_id)
       IS DISTINCT FROM
       (OLD.id, OLD.number, OLD.user_id, OLD.period, OLD.currency, OLD.subtotal, OLD.total,
        OLD.credit_applied, OLD.issued_at, OLD.due_at, OLD.billing_email, OLD.billing_name,
        OLD.billing_company, OLD.billing_address_line1, OLD.billing_address_line2, OLD.billing_city,
        OLD.billing_postal_code, OLD.billing_country, OLD.billing_tax_id) THEN
        RAISE EXCEPTION 'issued invoices are immutable';
    END IF;
    IF NEW.amount_paid < OLD.amount_paid OR NEW.amount_paid > NEW.total - NEW.credit_applied THEN
        RAISE EXCEPTION 'an invoice''s paid amount only grows, up to its total less the credit applied';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'issued' AND NEW.status = 'paid' AND NEW.amount_paid + NEW.credit_applied = NEW.total)
        OR (OLD.status IN ('issued', 'paid') AND NEW.status = 'void' AND NEW.amount_paid = 0)
    ) THEN
        RAISE EXCEPTION 'an invoice moves only issued → paid (paid in full) or issued → void (nothing paid)';
    END IF;
    IF OLD.status <> 'issued' AND NEW.amount_paid <> OLD.amount_paid THEN
        RAISE EXCEPTION 'a paid or void invoice takes no payment';
    END IF;
    RETURN NEW;
END $$;
