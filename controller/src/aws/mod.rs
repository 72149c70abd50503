//! Real implementations of the engine's ports on AWS, one file per service.
//!
//! Every call goes through [`retry`]: a per-account, per-API token bucket and jittered
//! exponential backoff, so throttling never becomes a failed deploy.

pub mod cloudformation;
pub mod cloudwatch;
pub mod codepipeline;
pub mod deployer;
pub mod ecr;
pub mod errors;
pub mod observe;
pub mod retry;
pub mod sns;
pub mod stack_waiters;
pub mod sts;
