//! Connect to the EKS cluster as `aws eks get-token` does, with no kubeconfig: endpoint and CA from
//! `DescribeCluster`, and a bearer token that is `k8s-aws-v1.` + base64url of a SigV4-presigned STS
//! `GetCallerIdentity` URL signing the `x-k8s-aws-id` header. Tokens last 15 minutes; the client is
//! remade with a fresh one after 10.

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine;
use tokio::sync::Mutex;

use crate::error::{Exit, Failure, Result, sdk};

const TOKEN_REFRESH: Duration = Duration::from_secs(10 * 60);

pub struct Cluster {
    pub name: String,
    endpoint: String,
    ca_der: Vec<u8>,
    aws: aws_config::SdkConfig,
    client: Mutex<Option<(kube::Client, Instant)>>,
}

fn failure(message: String) -> Failure {
    Failure::new(
        Exit::Aws,
        "cluster",
        message,
        "check that the cluster stack deployed and that your credentials may call eks:DescribeCluster",
    )
}

/// The presigned URL inside the token; `sts_endpoint` is STS's (or the configured endpoint).
pub fn presign_get_caller_identity(
    identity: &aws_credential_types::Credentials,
    region: &str,
    sts_endpoint: &str,
    cluster: &str,
    now: SystemTime,
) -> std::result::Result<String, String> {
    let identity = identity.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let url = format!(
        "{}/?Action=GetCallerIdentity&Version=2011-06-15",
        sts_endpoint.trim_end_matches('/')
    );
    let signable = SignableRequest::new(
        "GET",
        &url,
        std::iter::once(("x-k8s-aws-id", cluster)),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut request = http::Request::get(&url)
        .body(())
        .map_err(|e| e.to_string())?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

pub fn token_from_url(url: &str) -> String {
    format!(
        "k8s-aws-v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    )
}

impl Cluster {
    pub async fn connect(aws: &aws_config::SdkConfig, name: &str) -> Result<Cluster> {
        let eks = crate::endpoint::eks(aws);
        let described = eks
            .describe_cluster()
            .name(name)
            .send()
            .await
            .map_err(|e| failure(sdk(e)))?;
        let c = described
            .cluster
            .ok_or_else(|| failure(format!("no cluster {name}")))?;
        let endpoint = c
            .endpoint()
            .ok_or_else(|| failure(format!("cluster {name} has no endpoint yet")))?
            .to_string();
        let ca_b64 = c
            .certificate_authority()
            .and_then(|ca| ca.data())
            .ok_or_else(|| failure(format!("cluster {name} has no CA")))?;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca_b64)
            .map_err(|e| failure(format!("the cluster CA is not base64: {e}")))?;
        let pem =
            String::from_utf8(pem).map_err(|_| failure("the cluster CA is not PEM".into()))?;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let ca_der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| failure(format!("the cluster CA is not PEM: {e}")))?;
        Ok(Cluster {
            name: name.into(),
            endpoint,
            ca_der,
            aws: aws.clone(),
            client: Mutex::new(None),
        })
    }

    async fn token(&self) -> Result<String> {
        let provider = self
            .aws
            .credentials_provider()
            .ok_or_else(|| failure("no AWS credentials configured".into()))?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| failure(format!("AWS credentials: {e}")))?;
        let region = self
            .aws
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let sts = self
            .aws
            .endpoint_url()
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let url = presign_get_caller_identity(&creds, &region, &sts, &self.name, SystemTime::now())
            .map_err(|e| failure(format!("presigning the EKS token: {e}")))?;
        Ok(token_from_url(&url))
    }

    /// A kube client with a token younger than ten minutes.
    pub async fn client(&self) -> Result<kube::Client> {
        let mut slot = self.client.lock().await;
        if let Some((c, made)) = slot.as_ref()
            && made.elapsed() < TOKEN_REFRESH
        {
            return Ok(c.clone());
        }
        let uri = self
            .endpoint
            .parse()
            .map_err(|e| failure(format!("the cluster endpoint {}: {e}", self.endpoint)))?;
        let mut config = kube::Config::new(uri);
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.auth_info.token = Some(self.token().await?.into());
        config.read_timeout = Some(Duration::from_secs(60));
        let client = kube::Client::try_from(config)
            .map_err(|e| failure(format!("a Kubernetes client for {}: {e}", self.endpoint)))?;
        *slot = Some((client.clone(), Instant::now()));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_a_presigned_get_caller_identity_signing_the_cluster_header() {
        let creds =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let url = presign_get_caller_identity(
            &creds,
            "eu-west-1",
            "https://sts.eu-west-1.amazonaws.com",
            "iris",
            SystemTime::now(),
        )
        .unwrap();
        assert!(
            url.starts_with(
                "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F",
            "%2Feu-west-1%2Fsts%2Faws4_request",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        let token = token_from_url(&url);
        assert!(token.starts_with("k8s-aws-v1.") && !token.contains('='));
    }
}
