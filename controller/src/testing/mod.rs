//! Test support shared by the test suites, the benchmarks and the demo: a `moto_server`
//! on loopback, stub servers for what moto lacks. Never used by the controller at run time.

pub mod aws_stubs;
pub mod github_fake;
pub mod moto;
pub mod sns;
pub mod world;
