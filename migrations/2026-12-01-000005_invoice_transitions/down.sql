DROP TRIGGER invoice_lines_only_at_issue ON invoice_lines;
DROP FUNCTION refuse_late_invoice_line();
CREATE OR REPLACE FUNCTION refuse_invoice_amount_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.number <> OLD.number OR NEW.user_id <> OLD.user_id OR NEW.period <> OLD.period
       OR NEW.currency <> OLD.currency OR NEW.subtotal <> OLD.subtotal OR NEW.total <> OLD.total
       OR NEW.issued_at <> OLD.issued_at OR NEW.billing_name <> OLD.billing_name
       OR NEW.billing_email <> OLD.billing_email THEN
        RAISE EXCEPTION 'issued invoices are immutable';
    END IF;
    RETURN NEW;
END $$;
