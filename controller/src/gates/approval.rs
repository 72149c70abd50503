//! Approval requests: personal links by SNS email, tokens, and the rules for counting approvals.
