//! How long a stack's operations took: what the CloudFormation adapter measured in one deploy,
//! and the recent measurements of one stack that the next deploy's waits are shaped by.
//!
//! Owns only the data. The store keeps the last [`STACK_TIMINGS_KEPT`] deploys of each stack;
//! the adapter measures (see [`crate::backoff::Waited`]) and plans its looks from them.
//! Must never: carry anything but durations and the stack they belong to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many deploys of one stack are kept.
pub const STACK_TIMINGS_KEPT: usize = 10;

/// One stack: its account id, region and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StackKey {
    pub account: String,
    pub region: String,
    pub stack: String,
}

/// What one deploy (or rollback) of a stack measured, in milliseconds, each at least what the
/// step took: how long its change set took to become ready, and how long the executed change
/// set took to complete (`None`: that step did not run, e.g. nothing to change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackTiming {
    pub stack: StackKey,
    pub change_set_ms: Option<u64>,
    pub update_ms: Option<u64>,
}

impl StackTiming {
    pub fn new(stack: StackKey, change_set: Option<Duration>, update: Option<Duration>) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        StackTiming {
            stack,
            change_set_ms: change_set.map(ms),
            update_ms: update.map(ms),
        }
    }
}

/// The recent measurements of one stack, newest first (empty: never deployed through
/// tollgate, or nothing kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackHistory {
    pub change_set: Vec<Duration>,
    pub update: Vec<Duration>,
}
