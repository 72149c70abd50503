//! Counts every AWS API attempt into [`crate::metrics`], by service, operation and outcome.
//!
//! Owns [`CallMetrics`], an AWS SDK interceptor attached to every SDK client the adapters
//! build ([`CallMetrics::attach`] is called where each client is configured). The SDK's own
//! retries are off for every config [`super::sts::Credentials`] hands out, so one SDK
//! execution is one attempt; the retries [`super::retry::Limiter`] makes are separate
//! executions and each is counted, with its own outcome (`throttled`, `server_error`, …).
//!
//! Names come from the SDK's operation metadata (`CloudFormation`/`CreateChangeSet`): a fixed
//! set per SDK, so the series stay bounded. The outcome comes from the attempt's typed result:
//! the SDK's timeout and connector errors, the HTTP status, and for a service error the code in
//! its [`ErrorMetadata`] (the same throttling codes [`super::errors`] retries on).
//!
//! Must never: change a request or a response, or record anything about a request's content.

use std::error::Error as StdError;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::ErrorMetadata;

use super::errors::is_throttling;
use crate::metrics::AwsLabels;

/// The interceptor: counts one `tollgate_aws_calls_total` sample per attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallMetrics;

impl Intercept for CallMetrics {
    fn name(&self) -> &'static str {
        "tollgate-call-metrics"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(meta) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let labels = AwsLabels {
            service: meta.service().to_string(),
            operation: meta.name().to_string(),
            outcome: outcome(context),
        };
        crate::metrics::global()
            .aws_calls
            .get_or_create(&labels)
            .inc();
        Ok(())
    }
}

/// What became of one attempt.
fn outcome(context: &FinalizerInterceptorContextRef<'_>) -> &'static str {
    let status = context.response().map(|r| r.status().as_u16());
    let err = match context.output_or_error() {
        Some(Ok(_)) => return "success",
        Some(Err(err)) => err,
        None => return "transport_error",
    };
    if err.is_timeout_error() || err.as_connector_error().is_some_and(|c| c.is_timeout()) {
        return "timeout";
    }
    if err.is_connector_error() {
        return "transport_error";
    }
    let code = err.as_operation_error().and_then(|e| error_code(e));
    match (code, status) {
        (Some(code), _) if is_throttling(code) => "throttled",
        (_, Some(429)) => "throttled",
        (_, Some(500..=599)) => "server_error",
        (_, None) => "transport_error",
        _ => "client_error",
    }
}

/// The AWS error code of a service error: the generated error types keep their
/// [`ErrorMetadata`] as the source of an error the model does not name (throttling among them).
fn error_code<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a str> {
    let mut next: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(meta) = e.downcast_ref::<ErrorMetadata>() {
            return meta.code();
        }
        next = e.source();
    }
    None
}
