//! deployer
