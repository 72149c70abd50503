//! Turns AWS SDK errors into the few [`PortError`]s the engine branches on.
//!
//! Owns the one table that says which AWS error codes are temporary (throttling, 5xx,
//! timeouts), which are refusals, which mean "does not exist" and which mean a bad request.
//!
//! Must never put credentials in a message: messages carry only the AWS error code, the
//! service's own message and, when there is no code, the HTTP status.

use std::any::Any;
use std::future::Future;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::engine::ports::PortError;

/// Error codes AWS uses for "slow down".
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    // ECR's, in its troubleshooting guide ("HTTP 429: Too Many Requests or ThrottleException").
    "ThrottleException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// Error codes for a fault on AWS's side.
const SERVER_FAULT: &[&str] = &[
    "InternalFailure",
    "InternalError",
    "InternalServiceError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// Error codes for refused credentials or permissions (besides `AccessDenied*`).
const DENIED: &[&str] = &[
    "UnauthorizedOperation",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "AuthFailure",
];

/// Error codes for a malformed request (besides `InvalidParameter*`).
const INVALID: &[&str] = &[
    "ValidationError",
    "ValidationException",
    "MissingParameter",
    "InvalidAction",
    "InsufficientCapabilitiesException",
];

/// Classifies any error the SDK returns for any operation.
pub fn classify<E, R>(err: &SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata,
    R: 'static,
{
    match err {
        SdkError::TimeoutError(_) => PortError::Retryable("the request to AWS timed out".into()),
        SdkError::DispatchFailure(f) => {
            // Credentials that could not be had (an assumed role's session not renewed) fail
            // before the request is sent, as a dispatch failure carrying the provider's error.
            if let Some(port) = f.as_connector_error().and_then(|c| port_error_within(c)) {
                return port;
            }
            let source = f.as_connector_error().map(DisplayErrorContext);
            let detail = source.map_or_else(|| "no detail".to_string(), |s| s.to_string());
            PortError::Retryable(format!("could not reach AWS: {detail}"))
        }
        SdkError::ConstructionFailure(_) => {
            PortError::Invalid("the AWS request could not be built".into())
        }
        SdkError::ResponseError(r) => unparsed_response(status_of(r.raw())),
        SdkError::ServiceError(s) => classify_code(
            err.code().unwrap_or_default(),
            err.message().unwrap_or_default(),
            status_of(s.raw()),
        ),
        _ => PortError::Failed("unexpected AWS SDK error".into()),
    }
}

/// The [`PortError`] in `err`'s chain of sources, if there is one.
fn port_error_within(err: &(dyn std::error::Error + 'static)) -> Option<PortError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(port) = e.downcast_ref::<PortError>() {
            return Some(port.clone());
        }
        next = e.source();
    }
    None
}

/// Classifies a service error by its code, message and HTTP status (when known).
pub fn classify_code(code: &str, message: &str, status: Option<u16>) -> PortError {
    let text = describe(code, message, status);
    if is_retryable(code, status) {
        PortError::Retryable(text)
    } else if code.starts_with("AccessDenied") || DENIED.contains(&code) || status == Some(403) {
        PortError::Denied(text)
    } else if code.contains("NotFound")
        || (code == "ValidationError" && message.contains("does not exist"))
    {
        PortError::NotFound(text)
    } else if code.starts_with("InvalidParameter") || INVALID.contains(&code) {
        PortError::Invalid(text)
    } else {
        PortError::Failed(text)
    }
}

/// Awaits an SDK call and classifies its error: `limiter.call(a, "Op", || sdk(c.op().send()))`.
pub async fn sdk<T, E, R>(
    call: impl Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T, PortError>
where
    E: ProvideErrorMetadata,
    R: 'static,
{
    call.await.map_err(|e| classify(&e))
}

/// Sends a call whose error `done_code` means its work is already done (a retried create that
/// the first try completed, say): that error counts as success.
pub async fn sdk_done_unless<T, E, R>(
    call: impl Future<Output = Result<T, SdkError<E, R>>>,
    done_code: &str,
) -> Result<(), PortError>
where
    E: ProvideErrorMetadata,
    R: 'static,
{
    match call.await {
        Err(e) if has_code(&e, done_code) => Ok(()),
        other => other.map(drop).map_err(|e| classify(&e)),
    }
}

/// Prefixes the message with what was being attempted, keeping the kind.
pub fn context(err: PortError, what: &str) -> PortError {
    reworded(err, |m| format!("{what}: {m}"))
}

/// `err` with every appearance of `secret` in its message replaced by `…`: a service's
/// validation error can quote the value it refused (STS: "Value '…' at 'externalId' failed to
/// satisfy constraint").
pub fn without_secret(err: PortError, secret: &str) -> PortError {
    if secret.is_empty() {
        return err;
    }
    reworded(err, |m| m.replace(secret, "…"))
}

/// `err` of the same kind, its message passed through `f`.
fn reworded(err: PortError, f: impl FnOnce(String) -> String) -> PortError {
    match err {
        PortError::Retryable(m) => PortError::Retryable(f(m)),
        PortError::Denied(m) => PortError::Denied(f(m)),
        PortError::NotFound(m) => PortError::NotFound(f(m)),
        PortError::Invalid(m) => PortError::Invalid(f(m)),
        PortError::Failed(m) => PortError::Failed(f(m)),
        drift @ PortError::Drift { .. } => drift,
    }
}

/// `true` when `err` is the service error `code` (e.g. `AlreadyExistsException`).
pub fn has_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>, code: &str) -> bool {
    err.code() == Some(code)
}

/// `code` is one of AWS's "slow down" error codes.
pub fn is_throttling(code: &str) -> bool {
    THROTTLING.contains(&code)
}

fn is_retryable(code: &str, status: Option<u16>) -> bool {
    is_throttling(code) || SERVER_FAULT.contains(&code) || matches!(status, Some(429 | 500..=599))
}

fn describe(code: &str, message: &str, status: Option<u16>) -> String {
    match (code.is_empty(), message.is_empty(), status) {
        (false, false, _) => format!("{code}: {message}"),
        (false, true, _) => code.to_string(),
        (true, false, Some(s)) => format!("HTTP {s}: {message}"),
        (true, false, None) => message.to_string(),
        (true, true, Some(s)) => format!("HTTP {s}"),
        (true, true, None) => "unknown AWS error".to_string(),
    }
}

fn unparsed_response(status: Option<u16>) -> PortError {
    let text = match status {
        Some(s) => format!("an unreadable response from AWS (HTTP {s})"),
        None => "an unreadable response from AWS".to_string(),
    };
    if is_retryable("", status) || status.is_none() {
        PortError::Retryable(text)
    } else {
        PortError::Failed(text)
    }
}

/// The HTTP status of a raw response, when it is the SDK's usual response type.
fn status_of<R: 'static>(raw: &R) -> Option<u16> {
    let raw: &dyn Any = raw;
    raw.downcast_ref::<HttpResponse>()
        .map(|r| r.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sts::operation::assume_role::AssumeRoleError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn service_error(
        code: &str,
        message: &str,
        status: u16,
    ) -> SdkError<AssumeRoleError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(AssumeRoleError::generic(meta), raw)
    }

    /// A session that could not be renewed fails the call before it is sent: its kind (here a
    /// refusal) is kept, not turned into "could not reach AWS" and retried.
    #[test]
    fn a_credentials_failure_keeps_its_kind() {
        use aws_credential_types::provider::error::CredentialsError;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        let refused = PortError::Denied("cannot assume role: AccessDenied".into());
        let credentials = CredentialsError::provider_error(refused.clone());
        let err: SdkError<AssumeRoleError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(Box::new(credentials), None));
        assert_eq!(classify(&err), refused);
    }

    #[test]
    fn throttling_and_server_faults_are_retryable() {
        for code in [
            "Throttling",
            "ThrottlingException",
            "TooManyRequestsException",
            "RequestLimitExceeded",
            "ThrottleException",
        ] {
            assert!(
                classify(&service_error(code, "Rate exceeded", 400)).is_retryable(),
                "{code}"
            );
        }
        assert!(classify(&service_error("Whatever", "boom", 503)).is_retryable());
        assert!(classify_code("", "", Some(500)).is_retryable());
    }

    #[test]
    fn refusals_are_denied_and_name_the_code() {
        let err = classify(&service_error(
            "AccessDenied",
            "User x is not authorized",
            403,
        ));
        assert_eq!(
            err,
            PortError::Denied("AccessDenied: User x is not authorized".into())
        );
        assert!(matches!(
            classify_code("ExpiredToken", "", Some(400)),
            PortError::Denied(_)
        ));
        assert!(matches!(
            classify_code("UnauthorizedOperation", "", None),
            PortError::Denied(_)
        ));
    }

    #[test]
    fn missing_things_are_not_found() {
        let gone = classify_code(
            "ValidationError",
            "Stack with id s does not exist",
            Some(400),
        );
        assert!(matches!(gone, PortError::NotFound(_)));
        let repo = classify_code("RepositoryNotFoundException", "no repo", Some(400));
        assert!(matches!(repo, PortError::NotFound(_)));
    }

    #[test]
    fn bad_requests_are_invalid_and_the_rest_failed() {
        let bad = classify_code("ValidationError", "Template format error", Some(400));
        assert_eq!(
            bad,
            PortError::Invalid("ValidationError: Template format error".into())
        );
        assert!(matches!(
            classify_code("InvalidParameterValue", "x", None),
            PortError::Invalid(_)
        ));
        assert!(matches!(
            classify_code("LimitExceededException", "x", Some(400)),
            PortError::Failed(_)
        ));
    }

    #[test]
    fn a_timeout_is_retryable() {
        let err: SdkError<AssumeRoleError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(classify(&err).is_retryable());
    }
}
