//! Approval tokens: stored hashed, single use, expiring.
