-- The email address an approval link was sent to. Same column as ../migrations/0016.
ALTER TABLE approval_tokens ADD COLUMN recipient TEXT;
