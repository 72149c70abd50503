//! The planner's tests: a small simulated engine ([`sim`]), one test per status transition,
//! whole-promotion scenarios, property tests of the invariants, and deployment windows.

pub(crate) mod properties;
mod scenarios;
pub(crate) mod sim;
mod transitions;
mod windows;
