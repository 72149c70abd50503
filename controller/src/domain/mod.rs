//! The pure state machine of a release's promotion.
//!
//! Owns: the domain types ([`types`]), why a run is where it is ([`reason`]), the actions the
//! engine executes ([`action`]), the planner ([`plan::plan`]), what a bake lacks ([`bake`]), who brought a change and which approvals count ([`approval`]), the rules of `tollgate retry`
//! ([`retry`]) and deployment windows ([`window`]).
//! Must never: do I/O, read the clock, spawn tasks, or know about AWS, GitHub or SQL. The
//! engine feeds it snapshots and the current time; the tests drive it directly.

pub mod action;
pub mod approval;
pub mod bake;
pub mod names;
pub mod plan;
pub mod reason;
pub mod retry;
pub mod timing;
pub mod types;
pub mod window;

#[cfg(test)]
pub(crate) mod tests;

pub use action::*;
pub use approval::{
    Contributor, ContributorRole, ExposedSubscription, Exposure, PolicyChange, PolicyHistory,
};
pub use names::*;
pub use plan::{Plan, plan};
pub use reason::{AlarmProblem, DataGap, Reason, RequestState};
pub use timing::{STACK_TIMINGS_KEPT, StackHistory, StackKey, StackTiming};
pub use types::*;
