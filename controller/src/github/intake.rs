//! Turning verified webhook events into releases.
