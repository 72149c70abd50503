//! The integration suite: one test binary, one module per area.

mod approvals;
mod approvals_moto;
mod aws_cloudformation;
mod aws_cloudwatch;
mod aws_codepipeline;
mod aws_ecr;
mod aws_sns;
mod aws_sts;
mod bootstrap_templates;
mod cli_control;
mod config_validate;
mod e2e_moto;
mod engine;
mod engine_codepipeline;
mod engine_crash;
mod engine_support;
mod examples;
mod gates_runner;
mod github_forge;
mod github_intake;
mod github_webhook;
mod moto_sts;
mod nohang;
mod release_page;
mod sns_intake;
mod sns_verify;
