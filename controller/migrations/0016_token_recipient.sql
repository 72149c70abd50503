-- The email address an approval link was sent to (NULL for a shared link, and for links sent
-- before it was kept). A link whose approver's address has changed since is replaced: the old
-- address no longer decides, and the new one gets a link of its own.
ALTER TABLE approval_tokens ADD COLUMN recipient TEXT;
