//! Test support for tollgate, shared by the integration tests, the benchmarks and the demo:
//! a `moto_server` on loopback, stub servers for what moto lacks, a proxy whose first
//! connections hang, a clock tests move forward, a GitHub fake, an SNS signer,
//! a three-account world, in-memory fakes of the engine's ports, a crash-injection fuse and a
//! `tollgate serve` child process on loopback.
//!
//! Must never: be a normal dependency of the controller. It is a dev-dependency only, so none of
//! this reaches the shipped binary.

pub mod aws_stubs;
pub mod clock;
pub mod engine_world;
pub mod fakes;
pub mod fuse;
pub mod github_fake;
pub mod hang;
pub mod hold;
pub mod moto;
pub mod serve;
pub mod sns;
pub mod state;
pub mod world;
