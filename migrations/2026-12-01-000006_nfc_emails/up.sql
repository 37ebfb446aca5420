-- payg now stores emails in Unicode NFC (src/domain/text.rs), so `josé@`
-- sent composed or decomposed is one account. Older rows are brought to NFC,
-- except where that would collide with an account already spelt in NFC:
-- such twins are the very bug this fixes, and the NFC one is the account
-- that logs in from now on (the other keeps its data and can be merged by
-- hand). Rows whose NFC form would not be lower case are left as they are.
UPDATE users u
SET email = normalize(u.email, NFC)
WHERE u.email IS NOT NFC NORMALIZED
  AND normalize(u.email, NFC) = lower(normalize(u.email, NFC))
  AND NOT EXISTS (
      SELECT 1 FROM users twin
      WHERE twin.id <> u.id AND lower(twin.email) = lower(normalize(u.email, NFC))
  );
