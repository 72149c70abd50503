//! GitHub: webhook intake (signature, payload parsing) and reporting back (Deployments, statuses).

pub mod webhook;
pub mod forge;
pub mod intake;
