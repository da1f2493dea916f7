//! End-to-end tests of the sandbox. `api` runs the cluster API in-process (no sockets); the
//! others start the real `sandbox serve` (cluster, moto launcher, edge) on loopback and stop it.

mod api;
mod aws;
mod cluster;
mod controllers;
mod kubectl;

use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;

pub use sandbox::harness::{Sandbox, model_server_binary};

/// What the tests add to the harness: SDK and kube-rs clients pointed at the sandbox.
pub trait Clients {
    fn aws(&self) -> impl std::future::Future<Output = aws_config::SdkConfig>;
    fn kube(&self) -> kube::Client;
    /// The same, with kube-client's retry of 429/503/504 off: what the service proxy answers
    /// arrives as it is.
    fn kube_without_retries(&self) -> kube::Client;
}

impl Clients for Sandbox {
    async fn aws(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(self.var("AWS_ENDPOINT_URL"))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ecr::config::Credentials::new(
                "sandbox",
                "sandbox",
                None,
                None,
                "sandbox-e2e",
            ))
            .load()
            .await
    }

    fn kube(&self) -> kube::Client {
        kube_client(self, true)
    }

    fn kube_without_retries(&self) -> kube::Client {
        kube_client(self, false)
    }
}

fn kube_client(sb: &Sandbox, retry: bool) -> kube::Client {
    // Both ring (ours) and aws-lc-rs (the AWS SDK's) are linked in: pick one for kube's TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(sb.var("SANDBOX_CLUSTER_URL").parse().unwrap());
    config.root_cert = Some(vec![sb.ca_der()]);
    config.auth_info.token = Some(sandbox::sandbox_token("e2e", SystemTime::now()).into());
    config.default_retry = retry;
    kube::Client::try_from(config).expect("a kube client")
}

/// CloudFormation parameters from keys and values.
pub fn parameters(pairs: &[(&str, &str)]) -> Vec<aws_sdk_cloudformation::types::Parameter> {
    pairs
        .iter()
        .map(|(k, v)| {
            aws_sdk_cloudformation::types::Parameter::builder()
                .parameter_key(*k)
                .parameter_value(*v)
                .build()
        })
        .collect()
}

/// A stack's status as DescribeStacks shows it.
pub async fn stack_status(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
) -> aws_sdk_cloudformation::types::StackStatus {
    cfn.describe_stacks()
        .stack_name(name)
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .stack_status()
        .unwrap()
        .clone()
}

/// Poll `f` until it gives `Some`, or panic after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
