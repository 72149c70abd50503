//! `POST /webhooks/github`.
