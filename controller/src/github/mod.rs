//! GitHub: webhook intake (signature, payload parsing) and reporting back (Deployments, statuses).

pub mod forge;
pub mod intake;
pub mod webhook;
