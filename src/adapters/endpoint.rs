//! The AWS clients, each with one interceptor: an endpoint that cannot be reached at all (refused,
//! no route, no such host, no answer to connect) stops being retried after a few attempts and fails with what it was and
//! where, instead of minutes of backoff ending in the SDK's raw `DispatchFailure`.
//!
//! Why an interceptor: the standard retry strategy classifies every I/O connector error as
//! transient and retries it up to `max_attempts` (aws-smithy-runtime's `TransientErrorClassifier`),
//! which is right for a reset mid-call and for throttling, wrong for a port nobody listens on.
//! A connector error of kind `Other(None)` is not retried, so after [`ATTEMPTS`] the interceptor
//! swaps the error for one (`modify_before_attempt_completion` runs before the retry decision;
//! see the `Intercept` docs in aws-smithy-runtime-api).

use std::fmt;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextMut,
};
use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// Where the attempt went (scheme and authority), kept for the error: by the time the attempt
/// completes, the request has been handed to the connector.
#[derive(Debug, Clone)]
struct Endpoint(String);

impl Storable for Endpoint {
    type Storer = StoreReplace<Self>;
}

/// Attempts at an unreachable endpoint before giving up (a restarting local endpoint or a DNS
/// blip gets two retries, about 3 s of backoff).
pub const ATTEMPTS: u32 = 3;

/// An endpoint that did not answer at all.
#[derive(Debug)]
pub struct Unreachable {
    pub service: &'static str,
    pub endpoint: String,
    pub cause: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach {} at {}: {} (after {ATTEMPTS} attempts); check AWS_ENDPOINT_URL (unset for AWS itself), the region and the network",
            self.service, self.endpoint, self.cause
        )
    }
}

impl std::error::Error for Unreachable {}

/// The `Unreachable` somewhere in `e`'s source chain.
pub fn unreachable_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Unreachable> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(u) = err.downcast_ref::<Unreachable>() {
            return Some(u);
        }
        next = err.source();
    }
    None
}

/// Why a connector error means "nobody there", or `None` for any other failure (a reset, a
/// read timeout mid-call: those stay retryable). "Nobody there" is: refused, no route, no such
/// host, or no answer to the connection at all (the connect timeout, 3.1 s by default in
/// aws-config's `TimeoutConfig`: an address that drops packets). A local address that cannot be
/// assigned (`AddrNotAvailable`, ports exhausted) says nothing about the endpoint, so it is not
/// one of these.
fn not_there(e: &ConnectorError) -> Option<String> {
    use std::io::ErrorKind::*;
    if !e.is_io() && !e.is_timeout() {
        return None;
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if e.is_io()
            && let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable
            )
        {
            return Some(io.to_string());
        }
        let text = err.to_string();
        // aws-smithy-http-client's HttpTimeoutError: "HTTP connect timeout occurred after 3.1s"
        // (a read timeout is "HTTP read timeout", and stays retryable).
        if text.contains("dns error")
            || text.contains("failed to lookup address")
            || (e.is_timeout() && text.contains("HTTP connect timeout"))
        {
            return Some(text);
        }
        next = err.source();
    }
    None
}

#[derive(Debug)]
struct GiveUpOnUnreachable {
    service: &'static str,
}

impl Intercept for GiveUpOnUnreachable {
    fn name(&self) -> &'static str {
        "GiveUpOnUnreachable"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let uri = context.request().uri();
        // Scheme and authority: where, not which call.
        let end = uri
            .find("://")
            .and_then(|i| uri[i + 3..].find('/').map(|j| i + 3 + j))
            .unwrap_or(uri.len());
        cfg.interceptor_state()
            .store_put(Endpoint(uri[..end].to_string()));
        Ok(())
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempts = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        if attempts < ATTEMPTS {
            return Ok(());
        }
        let endpoint = cfg
            .load::<Endpoint>()
            .map_or_else(|| "its endpoint".to_string(), |e| e.0.clone());
        let Some(Err(err)) = context.output_or_error_mut() else {
            return Ok(());
        };
        let Some(cause) = err.as_connector_error().and_then(not_there) else {
            return Ok(());
        };
        let unreachable = Unreachable {
            service: self.service,
            endpoint,
            cause,
        };
        *err = OrchestratorError::connector(ConnectorError::other(Box::new(unreachable), None));
        Ok(())
    }
}

pub fn cloudformation(aws: &aws_config::SdkConfig) -> aws_sdk_cloudformation::Client {
    aws_sdk_cloudformation::Client::from_conf(
        aws_sdk_cloudformation::config::Builder::from(aws)
            .interceptor(GiveUpOnUnreachable {
                service: "CloudFormation",
            })
            .build(),
    )
}

/// S3 for the state bucket. A custom endpoint (the sandbox, a local S3) has no per-bucket host
/// names: path-style URLs there.
pub fn s3(aws: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    // S3 holds the lock and the ledger, and the SDK sets no operation timeout by default
    // (aws-smithy-types `TimeoutConfig`: only the connect timeout): a call to an endpoint that
    // accepts and never answers would hold the run, and its lock, for ever. Each attempt gets
    // S3_ATTEMPT, each call S3_CALL with its retries; the connect timeout stays the SDK's.
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(aws)
            .force_path_style(aws.endpoint_url().is_some())
            .timeout_config(bounded(aws))
            .interceptor(GiveUpOnUnreachable { service: "S3" })
            .build(),
    )
}

/// The SDK's timeouts with each attempt and each call bounded (S3_ATTEMPT, S3_CALL).
fn bounded(aws: &aws_config::SdkConfig) -> aws_config::timeout::TimeoutConfig {
    aws.timeout_config()
        .map(|t| t.to_builder())
        .unwrap_or_default()
        .operation_attempt_timeout(S3_ATTEMPT)
        .operation_timeout(S3_CALL)
        .build()
}

/// The longest one attempt of an S3 (or STS) call may take (until its response's headers: a body is read
/// after), and the longest the call may take with its retries.
const S3_ATTEMPT: std::time::Duration = std::time::Duration::from_secs(10);
const S3_CALL: std::time::Duration = std::time::Duration::from_secs(30);

pub fn ecr(aws: &aws_config::SdkConfig) -> aws_sdk_ecr::Client {
    aws_sdk_ecr::Client::from_conf(
        aws_sdk_ecr::config::Builder::from(aws)
            .interceptor(GiveUpOnUnreachable { service: "ECR" })
            .build(),
    )
}

pub fn eks(aws: &aws_config::SdkConfig) -> aws_sdk_eks::Client {
    aws_sdk_eks::Client::from_conf(
        aws_sdk_eks::config::Builder::from(aws)
            .interceptor(GiveUpOnUnreachable { service: "EKS" })
            .build(),
    )
}

pub fn sts(aws: &aws_config::SdkConfig) -> aws_sdk_sts::Client {
    // Every command that touches the state bucket asks STS first (the bucket's owner): bounded
    // like S3, or an endpoint that never answers holds the run for ever.
    aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::from(aws)
            .timeout_config(bounded(aws))
            .interceptor(GiveUpOnUnreachable { service: "STS" })
            .build(),
    )
}

pub fn cloudfront(aws: &aws_config::SdkConfig) -> aws_sdk_cloudfront::Client {
    aws_sdk_cloudfront::Client::from_conf(
        aws_sdk_cloudfront::config::Builder::from(aws)
            .interceptor(GiveUpOnUnreachable {
                service: "CloudFront",
            })
            .build(),
    )
}

/// CloudWatch in `region` (else the app's): alarms and metrics are per region.
pub fn cloudwatch(aws: &aws_config::SdkConfig, region: Option<&str>) -> aws_sdk_cloudwatch::Client {
    let mut conf =
        aws_sdk_cloudwatch::config::Builder::from(aws).interceptor(GiveUpOnUnreachable {
            service: "CloudWatch",
        });
    if let Some(r) = region {
        conf = conf.region(aws_config::Region::new(r.to_string()));
    }
    aws_sdk_cloudwatch::Client::from_conf(conf.build())
}

pub fn elbv2(aws: &aws_config::SdkConfig) -> aws_sdk_elasticloadbalancingv2::Client {
    aws_sdk_elasticloadbalancingv2::Client::from_conf(
        aws_sdk_elasticloadbalancingv2::config::Builder::from(aws)
            .interceptor(GiveUpOnUnreachable {
                service: "Elastic Load Balancing",
            })
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_not_there_and_a_reset_is_not() {
        let refused = ConnectorError::io(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(not_there(&refused).is_some());
        let reset = ConnectorError::io(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(not_there(&reset), None);
        let timeout = ConnectorError::timeout(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(
            not_there(&timeout),
            None,
            "a timeout counts only as the connect timeout"
        );
        let no_local_address = ConnectorError::io(Box::new(std::io::Error::from(
            std::io::ErrorKind::AddrNotAvailable,
        )));
        assert_eq!(not_there(&no_local_address), None);
    }

    #[derive(Debug)]
    struct Timeout(&'static str);
    impl fmt::Display for Timeout {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "HTTP {} timeout occurred after 3.1s", self.0)
        }
    }
    impl std::error::Error for Timeout {}

    #[test]
    fn a_connect_timeout_is_not_there_and_a_read_timeout_is_not() {
        let connect = ConnectorError::timeout(Box::new(Timeout("connect")));
        assert!(not_there(&connect).is_some_and(|c| c.contains("connect timeout")));
        let read = ConnectorError::timeout(Box::new(Timeout("read")));
        assert_eq!(not_there(&read), None);
    }

    #[test]
    fn the_unreachable_error_is_found_through_the_sdk_error_chain() {
        let u = Unreachable {
            service: "S3",
            endpoint: "http://127.0.0.1:1".into(),
            cause: "Connection refused".into(),
        };
        let wrapped = ConnectorError::other(Box::new(u), None);
        let found = unreachable_in(&wrapped).expect("found");
        assert_eq!(found.service, "S3");
        assert!(
            found
                .to_string()
                .contains("cannot reach S3 at http://127.0.0.1:1")
        );
    }
}
