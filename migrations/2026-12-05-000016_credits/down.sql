-- Credit is money: a revert that would drop balances, draws or the credit
-- invoices applied refuses instead.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM credit_movements) OR EXISTS (SELECT 1 FROM invoices WHERE credit_applied > 0) THEN
        RAISE EXCEPTION 'prepaid credit has been used: this migration cannot be reverted';
    END IF;
END
$$;
-- The trigger as it was before the credit applied existed.
CREATE OR REPLACE FUNCTION refuse_invoice_amount_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.number, NEW.user_id, NEW.period, NEW.currency, NEW.subtotal, NEW.total,
        NEW.issued_at, NEW.due_at, NEW.billing_email, NEW.billing_name, NEW.billing_company,
        NEW.billing_address_line1, NEW.billing_address_line2, NEW.billing_city,
        NEW.billing_postal_code, NEW.billing_country, NEW.billing_tax_id)
       IS DISTINCT FROM
       (OLD.id, OLD.number, OLD.user_id, OLD.period, OLD.currency, OLD.subtotal, OLD.total,
        OLD.issued_at, OLD.due_at, OLD.billing_email, OLD.billing_name, OLD.billing_company,
        OLD.billing_address_line1, OLD.billing_address_line2, OLD.billing_city,
        OLD.billing_postal_code, OLD.billing_country, OLD.billing_tax_id) THEN
        RAISE EXCEPTION 'issued invoices are immutable';
    END IF;
    IF NEW.amount_paid < OLD.amount_paid OR NEW.amount_paid > NEW.total THEN
        RAISE EXCEPTION 'an invoice''s paid amount only grows, up to its total';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'issued' AND NEW.status = 'paid' AND NEW.amount_paid = NEW.total)
        OR (OLD.status = 'issued' AND NEW.status = 'void' AND NEW.amount_paid = 0)
    ) THEN
        RAISE EXCEPTION 'an invoice moves only issued → paid (paid in full) or issued → void (nothing paid)';
    END IF;
    IF OLD.status <> 'issued' AND NEW.amount_paid <> OLD.amount_paid THEN
        RAISE EXCEPTION 'a paid or void invoice takes no payment';
    END IF;
    RETURN NEW;
END $$;
ALTER TABLE invoices DROP CONSTRAINT invoices_paid_means_covered, DROP CONSTRAINT invoices_covered_at_most_once,
    DROP COLUMN amount_due, DROP COLUMN credit_applied;
DROP TABLE credit_movements;
ALTER TABLE users DROP COLUMN credit_balance;
