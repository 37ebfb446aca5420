-- payg now stores emails lower-cased and in Unicode NFC (src/domain/text.rs),
-- so `josé@` sent composed or decomposed is one account. The length rule
-- applies to the address as sent (254 characters); lower-casing and NFC can
-- lengthen it, so the stored value gets room (MAX_STORED_EMAIL_CHARS).
ALTER TABLE users DROP CONSTRAINT users_email_check;
ALTER TABLE users ADD CONSTRAINT users_email_check
    CHECK (email = lower(email) AND length(email) <= 1024);

-- Older rows are brought to NFC. Where several rows share one NFC spelling
-- (the very bug this fixes), or one is already spelt in NFC, only one row
-- can have it: the one already in NFC, else the oldest. The others keep
-- their spelling and data but can no longer log in by email (an operator
-- merges or renames them by hand); the notice lists them.
DO $$
DECLARE
    skipped uuid[];
BEGIN
    WITH candidates AS (
        SELECT id, normalize(email, NFC) AS nfc,
               row_number() OVER (PARTITION BY lower(normalize(email, NFC)) ORDER BY created_at, id) AS rank
        FROM users
        WHERE email IS NOT NFC NORMALIZED
    ), moved AS (
        UPDATE users u
        SET email = c.nfc
        FROM candidates c
        WHERE u.id = c.id
          AND c.rank = 1
          AND c.nfc = lower(c.nfc)
          AND NOT EXISTS (
              SELECT 1 FROM users twin
              WHERE twin.id <> u.id AND lower(twin.email) = lower(c.nfc)
          )
        RETURNING u.id
    )
    SELECT array_agg(c.id) INTO skipped
    FROM candidates c
    WHERE c.id NOT IN (SELECT id FROM moved);
    IF skipped IS NOT NULL THEN
        RAISE NOTICE 'emails left as they were (an NFC twin exists, or the NFC form is not lower case): %', skipped;
    END IF;
END $$;
